"""text2live: text-driven layered image and video editing (Text2LIVE, Bar-Tal et al., ECCV 2022)."""

__version__ = "0.1.0"
