"""Training a Neural Layered Atlas (NLA, Kasten et al. 2021) on a video: its inputs, objective and training."""
