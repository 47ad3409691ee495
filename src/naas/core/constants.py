"""Protocol timers and limits in one place (cf. wireguard-go device/constants.go).

Spec constants first: changing them changes how two members interact. Then the
implementation limits, which only bound this process's memory and work.
"""

# -- protocol timers (seconds) -------------------------------------------------------------
REKEY_AFTER_TIME = 120.0  # the initiator starts a new handshake for a session this old
REJECT_AFTER_TIME = 180.0  # a session this old is neither used nor accepted
REKEY_TIMEOUT = 2.0  # retransmit a handshake initiation not answered within this
REKEY_ATTEMPT_TIME = 30.0  # give up a handshake after this; retry after a backoff (1 s, doubling to 30 s)
PROBE_INTERVAL = 1.0  # probe every direct link this often (with +-20% jitter)
PROBE_JITTER = 0.2
PROBE_RETRY_INTERVAL = 0.3  # after an unanswered probe, probe again this soon
LINK_DOWN_AFTER_MISSES = 3  # a link whose last N probes went unanswered is down
REHANDSHAKE_AFTER_MISSES = 6  # no answer at all for this long: the peer may have restarted
LINK_STATE_DIGEST_INTERVAL = 2.0  # a hash of our link state (lsd_sum) to one random peer this often
LINK_STATE_BATCH_INTERVAL = 0.5  # new links and cost changes wait this long to share a delta
GOSSIP_INTERVAL = 5.0  # a hash of our member table (members_sum) to one random peer this often
REJECT_AFTER_MESSAGES = 2**64 - 2**13  # no counter at or beyond this is sent or accepted

# -- implementation limits -----------------------------------------------------------------
MAX_HANDSHAKES_PER_BATCH = 8  # initiations of one batch that may cost a Diffie-Hellman (core/cookie.py)
MAX_QUEUED_FRAMES = 128  # frames held per peer while its handshake completes
MAX_SESSIONS_PER_PEER = 3  # newest first: next, current, previous
MAX_ENDPOINTS_PER_MEMBER = 4
MAX_LEARNED_MACS = 4096
LEARNED_MAC_TTL = 300.0
MAC_MOVE_QUIET = 2.0  # a learnt MAC moves to another member only after this long unheard (core/switch.py)
MAX_CONTROL_BYTES = 60000
MAX_MEMBERS_PER_GOSSIP = 64
