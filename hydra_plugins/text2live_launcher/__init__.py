"""text2live's Hydra launcher: every job of a sweep in its own process, on its own GPU."""
