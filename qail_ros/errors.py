"""Errors raised by qail_ros. Each message names the problem and, where there is one, the fix."""


class QailRosError(Exception):
    """Base class of every error qail_ros raises on purpose."""


class UnknownMessageTypeError(QailRosError, KeyError):
    """A ROS message type name that the typestore does not know."""

    def __str__(self):  # KeyError would quote the message otherwise.
        return str(self.args[0]) if self.args else ''


class ImageEncodingError(QailRosError, ValueError):
    """An image encoding that qail_ros cannot convert."""


class ParameterError(QailRosError, ValueError):
    """A bad parameter file, parameter name or parameter value."""


class LaunchError(QailRosError):
    """A launch description that cannot be found or run."""


class BagError(QailRosError):
    """A bag that cannot be written or read."""


class TransportError(QailRosError):
    """The embedded middleware could not be started or reached."""
