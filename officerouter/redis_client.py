"""The Redis connections of a cluster node: one for commands, one for subscriptions.

Built on txredisapi's protocols (hiredis parses the replies) under Twisted's own
:class:`~twisted.application.internet.ClientService`, which reconnects with
backoff.  txredisapi does not resubscribe after a reconnect and cannot tell a
dead connection from an idle one, so this module owns both: every channel is
subscribed again on each new subscriber connection, and both connections are
pinged every few seconds with a reply timeout that drops a connection whose
server stopped answering.  See docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import txredisapi

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from officerouter.backplane import BackplaneUnavailable
from officerouter.config import RedisTarget

log = Logger()

#: Seconds a command may wait for its reply before the connection is dropped.
REPLY_TIMEOUT = 5.0
#: Seconds between liveness pings on each connection.
PING_INTERVAL = 2.0


class RedisUnavailable(BackplaneUnavailable):
    """Redis cannot be reached now; the caller answers 503 and retries later."""


class _Factory(Factory):
    """Builds one txredisapi protocol per connection attempt.

    txredisapi's ``connectionMade`` authenticates and selects the database, and
    reports a refusal by calling ``stopTrying`` and ``connectionError`` on its
    factory: those are recorded here so that a wrong password is one clear line
    instead of a reconnect loop.
    """

    noisy = False
    isLazy = True

    def __init__(
        self, protocol_class: type[Any], target: RedisTarget, on_refused: Any
    ) -> None:
        self._protocol_class = protocol_class
        self._target = target
        self._on_refused = on_refused

    def buildProtocol(self, addr: Any) -> Any:
        target = self._target
        p = self._protocol_class(
            charset=None,
            replyTimeout=REPLY_TIMEOUT,
            password=target.password,
            dbid=target.db or None,
            convertNumbers=False,
            username=target.username,
        )
        p.factory = self
        return p

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        self._on_refused(why)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """The subscriber connection: hands every message to the link."""

    on_message: Callable[[bytes, bytes], None] | None = None

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        if self.on_message is not None:
            self.on_message(channel, message)


class RedisLink(service.Service):
    """A command connection and a subscriber connection to one Redis server.

    :param target: where Redis is.
    :param reactor: the reactor (connections, timers).
    :param on_message: called with ``(channel, message)`` for every published
        message on a subscribed channel, in the order Redis sent them.
    :param on_state: called with ``True`` when both connections are up and every
        channel is subscribed again, ``False`` when either is lost.
    :param name: names the connections in Redis (``CLIENT LIST``).
    """

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,
        *,
        on_message: Callable[[bytes, bytes], None],
        on_state: Callable[[bool], None],
        name: str = "officerouter",
    ) -> None:
        self.target = target
        #: ``CLIENT SETNAME`` of the connections (``<name>:cmd``, ``<name>:sub``),
        #: so that an operator's ``CLIENT LIST`` tells whose they are.
        self.name = name
        self._reactor = reactor
        self._on_message = on_message
        self._on_state = on_state
        self._channels: set[bytes] = set()
        self._commands: Any = None
        self._subscriber: Any = None
        self._up = False
        self._waiters: list[defer.Deferred[None]] = []
        self.refusal: str | None = None
        #: Times the link came back after it was lost (metrics).
        self.reconnects = 0
        self._was_up = False
        #: Called with the round trip, in seconds, of each liveness PING on the
        #: command connection (the metrics' histogram, when enabled).
        self.on_rtt: Callable[[float], None] = lambda seconds: None
        endpoint = self._endpoint(target, reactor)
        self._command_service = ClientService(
            endpoint,
            _Factory(txredisapi.RedisProtocol, target, self._refused),
            retryPolicy=_backoff,
            prepareConnection=self._command_ready,
        )
        self._subscriber_service = ClientService(
            endpoint,
            _Factory(_Subscriber, target, self._refused),
            retryPolicy=_backoff,
            prepareConnection=self._subscriber_ready,
        )
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = reactor

    @staticmethod
    def _endpoint(target: RedisTarget, reactor: Any) -> Any:
        endpoint = endpoints.HostnameEndpoint(
            reactor, target.host, target.port, timeout=REPLY_TIMEOUT
        )
        if target.tls:
            from twisted.internet.ssl import optionsForClientTLS

            return endpoints.wrapClientTLS(optionsForClientTLS(target.host), endpoint)
        return endpoint

    @property
    def up(self) -> bool:
        """Whether both connections are ready (and every channel subscribed)."""
        return self._up

    # ------------------------------------------------------------ life

    def startService(self) -> None:
        super().startService()
        self._command_service.startService()
        self._subscriber_service.startService()
        self._pinger.start(PING_INTERVAL, now=False)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._pinger.running:
            self._pinger.stop()
        self._set_up(False)
        return defer.gatherResults(
            [
                self._command_service.stopService(),
                self._subscriber_service.stopService(),
            ],
            consumeErrors=True,
        ).addCallback(lambda _: None)

    def when_up(self, timeout: float) -> defer.Deferred[None]:
        """Fire once both connections are ready; fail after ``timeout`` seconds.

        Fails with :class:`RedisUnavailable` when Redis refused the credentials
        or could not be reached in time.
        """
        if self._up:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(done)

        def timed_out(failure: Failure) -> Failure:
            failure.trap(defer.TimeoutError)
            return Failure(
                RedisUnavailable(
                    self.refusal or f"no answer from {self.target.describe()}"
                )
            )

        return done.addTimeout(timeout, self._reactor).addErrback(timed_out)

    def _refused(self, why: str) -> None:
        # txredisapi's message names the server's refusal (WRONGPASS...), never
        # the password itself.
        self.refusal = why.replace("Redis error: ", "")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(RedisUnavailable(self.refusal))
        log.error(
            "redis {target} refused the connection: {why}",
            target=self.target.describe(),
            why=self.refusal,
        )

    # ------------------------------------------------------------ connections

    def _command_ready(self, protocol: Any) -> Any:
        def named(p: Any) -> Any:
            return p.execute_command(
                "CLIENT", "SETNAME", f"{self.name}:cmd"
            ).addCallback(lambda _: p)

        def ready(p: Any) -> None:
            self._commands = p
            self.refusal = None
            p.whenDisconnected().addCallback(self._command_lost)
            self._update()

        return protocol.whenConnected().addCallback(named).addCallback(ready)

    def _subscriber_ready(self, protocol: Any) -> Any:
        def ready(p: Any) -> Any:
            p.on_message = self._on_message
            p.whenDisconnected().addCallback(self._subscriber_lost)
            # Named before it subscribes: a subscribed connection takes no
            # other command.
            d = p.execute_command("CLIENT", "SETNAME", f"{self.name}:sub")
            channels = sorted(self._channels)
            if channels:
                d.addCallback(lambda _: p.subscribe(channels))
            return d.addCallback(lambda _: p)

        def subscribed(p: Any) -> None:
            self._subscriber = p
            self._update()

        return protocol.whenConnected().addCallback(ready).addCallback(subscribed)

    def _command_lost(self, protocol: Any) -> None:
        if self._commands is protocol:
            self._commands = None
            self._update()

    def _subscriber_lost(self, protocol: Any) -> None:
        if self._subscriber is protocol:
            self._subscriber = None
            self._update()

    def _update(self) -> None:
        self._set_up(self._commands is not None and self._subscriber is not None)

    def _set_up(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            log.info("redis {target} connected", target=self.target.describe())
            if self._was_up:
                self.reconnects += 1
            self._was_up = True
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)
        elif self.running:
            log.warn("redis {target} lost; reconnecting", target=self.target.describe())
        self._on_state(up)

    def _ping(self) -> None:
        for connection in (self._commands, self._subscriber):
            if connection is not None:
                # A reply timeout aborts the connection (txredisapi); the
                # service then reconnects.  Errors are that, already handled.
                d = connection.ping()
                if connection is self._commands:
                    sent = self._reactor.seconds()
                    d.addCallback(
                        lambda _, sent=sent: self.on_rtt(self._reactor.seconds() - sent)
                    )
                d.addErrback(lambda _: None)

    # ------------------------------------------------------------ commands

    def execute(self, *args: Any) -> defer.Deferred[Any]:
        """Send one command; fails with :class:`RedisUnavailable` when not connected."""
        connection = self._commands
        if connection is None or not self._up:
            return defer.fail(RedisUnavailable("redis not connected"))
        try:
            d: defer.Deferred[Any] = connection.execute_command(*args)
        except txredisapi.ConnectionError:
            return defer.fail(RedisUnavailable("redis not connected"))
        return d.addErrback(_unavailable)

    def subscribe(self, channel: bytes) -> defer.Deferred[None]:
        """Subscribe to a channel, now and after every reconnect.

        Fires once Redis confirmed the subscription (at once when not connected:
        the channel is subscribed when the connection comes back).
        """
        self._channels.add(channel)
        subscriber = self._subscriber
        if subscriber is None:
            return defer.succeed(None)
        d: defer.Deferred[Any] = subscriber.subscribe([channel])
        d.addCallback(lambda _: None).addErrback(_unavailable)
        return d

    def unsubscribe(self, channels: Iterable[bytes]) -> None:
        """Stop receiving these channels (now, and after reconnects)."""
        gone = [c for c in channels if c in self._channels]
        self._channels.difference_update(gone)
        if gone and self._subscriber is not None:
            self._subscriber.unsubscribe(gone).addErrback(lambda _: None)


def _unavailable(failure: Failure) -> Failure:
    if failure.check(txredisapi.ConnectionError, txredisapi.TimeoutError):
        return Failure(RedisUnavailable(failure.getErrorMessage()))
    return failure


def _backoff(attempt: int) -> float:
    # 0.1 s, then doubling to 5 s: a restarted Redis is found again quickly.
    return float(min(0.1 * 2 ** min(attempt, 10), 5.0))


__all__ = ["RedisLink", "RedisUnavailable"]
