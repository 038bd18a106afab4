"""The experiment framework core: specs, plugin registry, runner, tracking.

The core knows nothing of MP3net, MNIST or audio. Built-in plugins live in the top-level ``plugins``
package and are loaded by module name through :mod:`framework.plugin_manager`, exactly like third-party
ones registered through the ``framework`` entry-point group.
"""

from framework.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"
