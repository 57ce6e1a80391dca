"""trademl: machine-learned trading signals for futures minute bars."""

__version__ = "0.1.0"
