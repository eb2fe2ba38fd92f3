"""Rate limiting, outgoing-buffer bounds and the origin allow-list, without sockets."""

from twisted.internet.task import Clock

from officerouter.limits import FloodGuard, LagProbe, OriginPolicy, Outbox, Verdict


def _guard(clock: Clock) -> FloodGuard:
    return FloodGuard(rate=20, burst=40, flood_seconds=5, now=clock.seconds)


def test_burst_is_allowed_then_excess_dropped_with_one_warning():
    """Forty frames at once pass; the next is dropped with a warning, later ones silently."""
    clock = Clock()
    guard = _guard(clock)
    assert [guard.check() for _ in range(40)] == [Verdict.ALLOW] * 40
    assert guard.check() is Verdict.DROP_AND_WARN
    assert guard.check() is Verdict.DROP
    assert guard.check() is Verdict.DROP


def test_bucket_refills_at_the_sustained_rate():
    """After the burst is spent, one frame per 1/20 s is allowed again."""
    clock = Clock()
    guard = _guard(clock)
    for _ in range(40):
        guard.check()
    clock.advance(0.05)
    assert guard.check() is Verdict.ALLOW
    assert guard.check() is Verdict.DROP_AND_WARN


def test_sustained_rate_is_never_limited():
    """A client sending exactly 20 frames a second for a minute is never dropped."""
    clock = Clock()
    guard = _guard(clock)
    verdicts = set()
    for _ in range(20 * 60):
        clock.advance(0.05)
        verdicts.add(guard.check())
    assert verdicts == {Verdict.ALLOW}


def test_new_burst_warns_again_after_a_quiet_second():
    """A burst ends after a second without drops; the next burst is warned once more."""
    clock = Clock()
    guard = _guard(clock)
    for _ in range(40):
        guard.check()
    assert guard.check() is Verdict.DROP_AND_WARN
    clock.advance(0.5)
    assert guard.check() is Verdict.ALLOW
    for _ in range(9):
        guard.check()
    assert guard.check() is Verdict.DROP  # same burst: no second warning
    clock.advance(2.5)  # quiet: refilled to the full burst
    for _ in range(40):
        assert guard.check() is Verdict.ALLOW
    assert guard.check() is Verdict.DROP_AND_WARN


def test_flooding_for_several_seconds_closes():
    """A client flooding at 100 frames a second is told to close after five seconds."""
    clock = Clock()
    guard = _guard(clock)
    seen: list[tuple[float, Verdict]] = []
    for _ in range(100 * 10):
        clock.advance(0.01)
        verdict = guard.check()
        seen.append((clock.seconds(), verdict))
        if verdict is Verdict.CLOSE:
            break
    closes = [t for t, v in seen if v is Verdict.CLOSE]
    assert closes, "flooding never closed"
    warnings = [t for t, v in seen if v is Verdict.DROP_AND_WARN]
    assert len(warnings) == 1
    assert 5.0 <= closes[0] - warnings[0] < 5.1


def test_outbox_keeps_every_frame_below_the_soft_limit():
    """Below the soft limit two positions of one sender are both kept, in order."""
    box = Outbox(soft_limit=1000, hard_limit=2000)
    assert box.push(b"p1", "pos\0alice")
    assert box.push(b"n1")
    assert box.push(b"p2", "pos\0alice")
    assert box.take() == b"p1n1p2"
    assert not box
    assert box.size == 0


def test_outbox_supersedes_positions_above_the_soft_limit():
    """Above the soft limit a sender's newer position replaces its queued one; others stay."""
    box = Outbox(soft_limit=10, hard_limit=1000)
    box.push(b"backend-1!")  # 10 bytes: at the soft limit
    box.push(b"A1", "pos\0alice")
    box.push(b"B1", "pos\0bob")
    box.push(b"A2", "pos\0alice")
    box.push(b"backend-2!")
    box.push(b"A3", "pos\0alice")
    assert box.superseded == 2
    assert box.take() == b"backend-1!B1backend-2!A3"


def test_outbox_reports_passing_the_hard_limit_and_never_drops_backend_frames():
    """Backend frames are never superseded; past the hard limit push returns False."""
    box = Outbox(soft_limit=4, hard_limit=20)
    results = [box.push(b"12345") for _ in range(5)]
    assert results == [True, True, True, True, False]
    assert box.size == 25
    box.clear()
    assert box.size == 0
    assert box.take() == b""


def test_origin_policy_empty_allows_everything():
    """Without an allow-list every origin, and no origin, may connect."""
    policy = OriginPolicy([""])
    assert policy.allows("https://evil.example")
    assert policy.allows(None)


def test_origin_policy_matches_exactly_and_by_subdomain_wildcard():
    """Listed origins and wildcard subdomains pass; look-alikes and other schemes do not."""
    policy = OriginPolicy(["https://app.example.com", "https://*.office.example"])
    assert policy.allows("https://app.example.com")
    assert policy.allows("HTTPS://APP.EXAMPLE.COM/")
    assert policy.allows("https://eu.office.example")
    assert not policy.allows("http://app.example.com")
    assert not policy.allows("https://app.example.com.evil.com")
    assert not policy.allows("https://office.example")
    assert not policy.allows("null")
    assert policy.allows(None)


def test_origin_policy_treats_file_pages_as_the_null_origin():
    """``null`` and a ``file://`` page pass an empty list, and a list only when it
    names ``null``, which no other pattern matches."""
    for origin in ("null", "NULL", "file://", "file:///home/a/page.html"):
        assert OriginPolicy([]).allows(origin)
        assert OriginPolicy(["https://app.example.com", "null"]).allows(origin)
        assert OriginPolicy(["Null"]).allows(origin)
        assert not OriginPolicy(["https://app.example.com"]).allows(origin)
        assert not OriginPolicy(["https://*.null"]).allows(origin)
    assert not OriginPolicy(["null"]).allows("https://app.example.com")


# ------------------------------------------------ frames charged by arrival


def probed(clock: Clock, rate: float = 20, burst: int = 40) -> FloodGuard:
    """A guard whose reads reach back as far as a probe on ``clock`` saw it late."""
    probe = LagProbe(clock)
    probe.attach()
    return FloodGuard(
        rate=rate,
        burst=burst,
        flood_seconds=5,
        now=clock.seconds,
        lag=probe.lag,
    )


def reads(guard: FloodGuard, frames: int) -> list[Verdict]:
    """One read carrying ``frames`` frames, each checked."""
    guard.read()
    return [guard.check() for _ in range(frames)]


def honest_client_with_a_stall(
    guard: FloodGuard, clock: Clock, stall: float
) -> list[Verdict]:
    """A client sending 10 frames a second for 10 s, read as they come, except
    that the process stalls ``stall`` seconds in the middle (the clock jumps:
    its timers run late) and then reads everything sent meanwhile at once."""
    verdicts: list[Verdict] = []
    for _ in range(50):
        clock.advance(0.1)
        verdicts += reads(guard, 1)
    clock.advance(stall)
    verdicts += reads(guard, round(stall * 10))
    for _ in range(50):
        clock.advance(0.1)
        verdicts += reads(guard, 1)
    return verdicts


def test_an_honest_client_read_late_is_not_limited():
    """10 frames a second, delivered in one read after the process stalled 500 ms,
    pass a limit of 10 a second with a burst of 2: each is charged by when it
    could have arrived, not when it was read."""
    clock = Clock()
    verdicts = honest_client_with_a_stall(probed(clock, rate=10, burst=2), clock, 0.5)
    assert set(verdicts) == {Verdict.ALLOW}


def test_an_honest_client_survives_a_long_stall_at_the_default_limits():
    """At 20/s with a burst of 40, the 60 frames of a 6 s stall all pass."""
    clock = Clock()
    verdicts = honest_client_with_a_stall(probed(clock), clock, 6.0)
    assert set(verdicts) == {Verdict.ALLOW}


def test_a_flood_read_frame_by_frame_is_still_limited_and_closed():
    """100 frames a second, read as they come, are cut to the rate and closed
    after flood_seconds, exactly as when charged at handling time."""
    clock = Clock()
    guard = probed(clock)
    seen: list[tuple[float, Verdict]] = []
    for _ in range(100 * 10):
        clock.advance(0.01)
        (verdict,) = reads(guard, 1)
        seen.append((clock.seconds(), verdict))
        if verdict is Verdict.CLOSE:
            break
    first_second = [v for t, v in seen if t <= 1.0 + 1e-9]
    assert first_second.count(Verdict.ALLOW) <= 40 + 20
    warnings = [t for t, v in seen if v is Verdict.DROP_AND_WARN]
    closes = [t for t, v in seen if v is Verdict.CLOSE]
    assert len(warnings) == 1
    assert closes
    assert 5.0 <= closes[0] - warnings[0] < 5.1


def test_a_flood_in_big_reads_is_limited_to_the_rate():
    """100 frames a second read in batches every half second: at most the rate passes."""
    clock = Clock()
    guard = probed(clock)
    allowed = 0
    for _ in range(8):  # 4 s
        clock.advance(0.5)
        allowed += reads(guard, 50).count(Verdict.ALLOW)
    assert allowed <= 40 + 20 * 4


def test_a_silent_client_flooding_gets_the_burst_when_the_process_keeps_up():
    """After a minute of silence in a punctual process, one read of 1 000 frames
    passes exactly the burst."""
    clock = Clock()
    guard = probed(clock)
    clock.pump([0.1] * 600)
    verdicts = reads(guard, 1000)
    assert verdicts.count(Verdict.ALLOW) == 40
    assert verdicts[40] is Verdict.DROP_AND_WARN


def test_a_silent_client_flooding_after_a_stall_gets_the_burst_and_the_lag():
    """The credit for a late read is bounded by how late the process was."""
    clock = Clock()
    guard = probed(clock)
    clock.pump([0.1] * 600)
    clock.advance(0.6)  # the probe's tick runs 0.5 s late
    verdicts = reads(guard, 1000)
    assert verdicts.count(Verdict.ALLOW) == 40 + 10


def test_lag_probe_measures_how_late_the_loop_was_and_forgets_it():
    """A timer due every 0.1 s that fires 0.4 s late reads as 0.4 s of lag for a second."""
    clock = Clock()
    probe = LagProbe(clock)
    probe.attach()
    clock.pump([0.1] * 10)
    assert probe.lag() == 0
    clock.advance(0.5)
    assert abs(probe.lag() - 0.4) < 1e-9
    clock.pump([0.1] * 9)
    assert abs(probe.lag() - 0.4) < 1e-9
    clock.pump([0.1] * 2)
    assert probe.lag() == 0


def test_lag_probe_runs_only_while_attached():
    """The probe's timer starts with its first user and stops with its last."""
    clock = Clock()
    probe = LagProbe(clock)
    assert clock.getDelayedCalls() == []
    probe.attach()
    probe.attach()
    assert len(clock.getDelayedCalls()) == 1
    probe.detach()
    assert len(clock.getDelayedCalls()) == 1
    probe.detach()
    assert clock.getDelayedCalls() == []
