"""The twistd plugin: found by Twisted's plugin system, and a proper IServiceMaker."""

from __future__ import annotations

from zope.interface.verify import verifyObject

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from officerouter import tap


def _officerouter_makers() -> list[IServiceMaker]:
    return [
        maker for maker in getPlugins(IServiceMaker) if maker.tapname == "officerouter"
    ]


def test_plugin_is_found():
    """Exactly one IServiceMaker named officerouter is registered."""
    assert len(_officerouter_makers()) == 1


def test_plugin_provides_iservicemaker():
    """The officerouter plugin passes verifyObject(IServiceMaker, ...)."""
    (maker,) = _officerouter_makers()
    assert verifyObject(IServiceMaker, maker)
    assert maker.description


def test_plugin_uses_the_tap_module():
    """The plugin's options and makeService are those of officerouter.tap."""
    (maker,) = _officerouter_makers()
    assert maker.options is tap.Options
    assert maker.makeService.__module__ == "officerouter.tap"
