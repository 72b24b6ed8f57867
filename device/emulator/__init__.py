"""A local, protocol-faithful ElevenAgents server for benches, tests and kiosks."""
