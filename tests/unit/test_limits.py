"""Rate limiting, outgoing-buffer bounds and the origin allow-list, without sockets."""

from twisted.internet.task import Clock

from officerouter.limits import FloodGuard, OriginPolicy, Outbox, Verdict


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
