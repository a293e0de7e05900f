"""Settings, the local stack and the files for running attnflow at scale."""
