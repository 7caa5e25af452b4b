"""hitl-kafka-connector: human-in-the-loop review for Kafka pipelines (HITL.sh)."""

__version__ = "0.1.0"
