"""Tools around the daemon: bench, replay, baselines, inspect, progress bars."""
