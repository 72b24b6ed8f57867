"""The application: the controller that runs the core's actions, and the daemon that builds it all."""
