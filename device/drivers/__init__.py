"""The edges of the world: each module owns one library, device, file or socket, and its thread."""
