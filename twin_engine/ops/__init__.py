"""What people run: the CLI, its Kafka clients, scenarios, the demo, doctor and benchmarks."""
