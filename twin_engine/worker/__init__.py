"""One worker of the consumer group: events in, streams, batched generation, publishing."""
