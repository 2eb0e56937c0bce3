"""opensegur."""

from importlib.metadata import version

# Read once from the installed distribution, so README.TXT of XDM packages, the API docs and pyproject agree.
__version__ = version("opensegur")
