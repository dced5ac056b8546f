"""The focaldet version, in a module of its own so that the package's parts can read it without importing the
package root (whose lazy attributes import those parts back)."""

__version__ = "0.1.0"
