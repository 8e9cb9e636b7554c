"""helmfile-operator: helmfile's model (environments, templated values, needs) in Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("helmfile-operator")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
