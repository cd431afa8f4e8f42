"""The built-in forward solvers (iterate, anderson, broyden), registered through the plugin host."""
