"""sfspec: YAML spec to trained, deployable policy."""

__version__ = "0.1.0"
