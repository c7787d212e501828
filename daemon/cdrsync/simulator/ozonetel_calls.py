"""The simulated Ozonetel calls: settings, legs, IST time arithmetic and both record shapes.

Pure and deterministic: ``draw_call`` turns a seeded generator into the legs of one call;
``bulk_record`` renders a leg as fetchCdrByPagination's 47 fields, ``callback_record`` as CDR in
CallBacks and the push carry it (with the account's ``Apikey``, as Ozonetel echoes it);
``report_serves`` is the CallBacks report-type rule. ``ozonetel.py`` holds the stateful
simulator that serves them.
"""

from __future__ import annotations

import calendar
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = [
    "BULK_FIELDS",
    "CALLBACK_FIELDS",
    "DAY_S",
    "IST_OFFSET_S",
    "OzonetelSimConfig",
    "SimLeg",
    "bulk_record",
    "callback_record",
    "draw_call",
    "hms",
    "ist",
    "ist_day",
    "parse_ist",
    "report_serves",
]


IST_OFFSET_S = 19_800
DAY_S = 86_400
MIGRATION_END_S = 3 * 3600  # yesterday's calls reach the historical report at 03:00 IST
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")

BULK_FIELDS: tuple[str, ...] = (
    "CallID", "CallDate", "StartTime", "EndTime", "Duration", "TalkTime", "HandlingTime",
    "CallerID", "DialedNumber", "E164", "DID", "Location", "AgentID", "AgentName", "Skill",
    "CampaignName", "CallFlow", "Type", "Status", "DialStatus", "AgentDialStatus",
    "CustomerDialStatus", "Disposition", "Comments", "HangupBy", "QueueTime", "HoldDuration",
    "WrapupDuration", "TimeToAnswer", "DialCount", "UCID", "UUI", "CallAudio",
    "CallerConfAudioFile", "ConferenceDuration", "CustomerRingTime", "DialOutName", "DynamicDID",
    "Event", "PickupTime", "Rating", "RatingComments", "TransferType", "TransferredTo",
    "VideoRecordingURL", "WrapUpEndTime", "WrapUpStartTime",
)  # fmt: skip
"""The 47 fields of a bulk record, in the order integrators list them."""

CALLBACK_FIELDS: tuple[str, ...] = (
    "monitorUCID", "UUI", "Did", "CampaignName", "Location", "CallerID", "PhoneName", "Skill",
    "StartTime", "EndTime", "TimeToAnswer", "CallDuration", "Duration", "FallBackRule",
    "DialedNumber", "Type", "AgentID", "AgentPhoneNumber", "AgentUniqueID", "AgentName",
    "Disposition", "HangupBy", "Status", "AudioFile", "TransferType", "TransferredTo", "Comments",
    "DialStatus", "Apikey", "AgentStatus", "CustomerStatus", "UserName", "CallerConfAudioFile",
    "ConfDuration", "CampaignStatus", "DataUniqueId", "CallCompleted", "ConferenceData",
)  # fmt: skip
"""The fields of a CDR in CallBacks record, as the vendor page lists them (``Apikey`` too)."""

_AGENTS = (
    ("A101", "Priya Sharma", "09800000101"),
    ("A102", "Rahul Verma", "09800000102"),
    ("A103", "Anita Rao", "09800000103"),
    ("A104", "Vikram Singh", "09800000104"),
)
_CAMPAIGNS = (("Inbound_Support", "Support"), ("Sales_Outbound", "Sales"))
_DIDS = ("918069000111", "918069000222")
_LOCATIONS = ("Mumbai", "Bengaluru", "Delhi", "Chennai")
_OUT_TYPES = ("Manual", "Progressive", "Preview", "Predictive")
_DISPOSITIONS = ("Resolved", "Callback Requested", "Not Interested", "")


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class OzonetelSimConfig:
    """What the simulated account holds and how the simulated API behaves."""

    seed: int = 1
    backlog: int = 1000
    backlog_days: float = 2.0
    live_per_minute: float = 20.0
    username: str = "sim-user"
    api_key: str = "sim-ozonetel-key"
    auth: str = "apikey"  # "token": the account's API Authentication is TOKEN
    bulk_rate_limit: int = 2
    bulk_rate_period_s: float = 60.0
    lookup_rate_limit: int = 50
    lookup_rate_period_s: float = 60.0
    token_rate_limit: int = 10
    token_rate_period_s: float = 3600.0
    token_ttl_s: float = 3600.0
    token_expired_status: int = 401
    retention_days: int = 15
    max_page_size: int = 500
    legs_fraction: float = 0.1
    answered_fraction: float = 0.75
    outbound_fraction: float = 0.4
    visible_delay_s: tuple[float, float] = (2.0, 8.0)
    transfer_legs: bool = False
    """The other reading of the leg ids: the legs of a transferred call share the first leg's
    UCID as their ``monitorUCID``, and a push carries ``UCID`` only where it differs from
    ``monitorUCID`` (the first leg's push has none, like a real 2018 push). False: every leg's
    ``monitorUCID`` is its own UCID."""
    push_url: str | None = None
    push_delay_s: float = 1.0
    push_attempts: int = 3
    push_drop: float = 0.0
    fault_5xx: float = 0.0
    fault_truncated: float = 0.0
    empty_shape: Literal["details", "no_data", "string_total"] = "details"
    """How a bulk answer looks: "details" (an empty window is ``details: []``, ``totalCount``
    a number), "no_data" (an empty window is ``{"status": "success", "message": "No Data
    Found"}``) or "string_total" (``totalCount`` a string, an empty window without
    ``details``)."""

    def __post_init__(self) -> None:
        for name in ("legs_fraction", "answered_fraction", "outbound_fraction", "push_drop",
                     "fault_5xx", "fault_truncated"):  # fmt: skip
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.empty_shape not in ("details", "no_data", "string_total"):
            raise ValueError(f"empty_shape must be details, no_data or string_total: {self!r}")
        if self.auth not in ("apikey", "token"):
            raise ValueError(f'auth must be "apikey" or "token", got {self.auth!r}')
        if self.backlog < 0 or self.backlog_days <= 0 or self.live_per_minute < 0:
            raise ValueError("backlog >= 0, backlog_days > 0 and live_per_minute >= 0 required")
        lo, hi = self.visible_delay_s
        if not 0 <= lo <= hi:
            raise ValueError(f"visible_delay_s must be (low, high), 0 <= low <= high: {lo, hi}")


class SimLeg(NamedTuple):
    """One leg of a simulated call (one UCID); times are epoch seconds."""

    ucid: str
    call_id: str
    start: int
    end: int
    ring: int
    talk: int
    answered: bool
    kind: str
    agent: int
    customer: str
    campaign: int
    location: int
    disposition: int
    transferred: bool
    visible_at: float
    live: bool
    monitor: str
    """The leg's ``monitorUCID``: its own UCID, or the first leg's (``transfer_legs``)."""


# ---------------------------------------------------------------------------- pure helpers


def ist(epoch: float) -> str:
    """The vendor's naive IST "YYYY-MM-DD HH:MM:SS" of an instant."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(epoch) + IST_OFFSET_S))


def ist_day(epoch: float) -> int:
    """The IST day number (days since 1970-01-01 IST) of an instant."""
    return int((epoch + IST_OFFSET_S) // DAY_S)


def parse_ist(text: str) -> float | None:
    """Epoch seconds of a "YYYY-MM-DD HH:MM:SS" IST string; None when it is not one."""
    if not _STAMP.fullmatch(text):
        return None
    try:
        parsed = time.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return float(calendar.timegm(parsed) - IST_OFFSET_S)


def hms(seconds: int) -> str:
    """Ozonetel's "HH:MM:SS" duration."""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def report_serves(start: float, report_type: str, now: float, retention_days: int) -> bool:
    """Whether CDR in CallBacks' ``report_type`` holds a call that started at ``start``.

    "currentday": calls whose IST start day is today. "historical": earlier days, but
    yesterday's only from 03:00 IST (migration), and nothing before today - retention_days.
    """
    day, today = ist_day(start), ist_day(now)
    if report_type == "currentday":
        return day == today
    if day >= today or day < today - retention_days:
        return False
    return not (day == today - 1 and (now + IST_OFFSET_S) % DAY_S < MIGRATION_END_S)


def bulk_record(leg: SimLeg) -> dict[str, Any]:
    """The leg as fetchCdrByPagination's 47-field record."""
    agent_id, agent_name, _ = _AGENTS[leg.agent]
    campaign, skill = _CAMPAIGNS[leg.campaign]
    total, wrap = leg.end - leg.start, 20 if leg.answered else 0
    did = _DIDS[leg.campaign]
    outbound = leg.kind != "InBound"
    status = "answered" if leg.answered else "NoAnswer"
    pickup = ist(leg.start + leg.ring) if leg.answered else ""
    return {
        "CallID": leg.call_id, "CallDate": ist(leg.start)[:10], "StartTime": ist(leg.start),
        "EndTime": ist(leg.end), "Duration": hms(total), "TalkTime": hms(leg.talk),
        "HandlingTime": hms(leg.talk + wrap), "CallerID": leg.customer,
        "DialedNumber": leg.customer if outbound else did, "E164": "+91" + leg.customer[-10:],
        "DID": did, "Location": _LOCATIONS[leg.location],
        "AgentID": agent_id if leg.answered else "",
        "AgentName": agent_name if leg.answered else "None",
        "Skill": "None" if outbound else skill, "CampaignName": campaign,
        "CallFlow": "Agent" if outbound else "IVR->Skill->Agent", "Type": leg.kind,
        "Status": "Answered" if leg.answered else "Unanswered", "DialStatus": status,
        "AgentDialStatus": "answered" if leg.answered else "", "CustomerDialStatus": status,
        "Disposition": _DISPOSITIONS[leg.disposition] if leg.answered else "", "Comments": "",
        "HangupBy": "AgentHangup" if leg.transferred else "UserHangup",
        "QueueTime": "00:00:00" if outbound else hms(min(leg.ring, 5)),
        "HoldDuration": "00:00:00", "WrapupDuration": hms(wrap),
        "TimeToAnswer": hms(leg.ring if leg.answered else 0), "DialCount": "1",
        "UCID": leg.ucid, "UUI": "", "CallAudio": _audio(leg), "CallerConfAudioFile": "",
        "ConferenceDuration": "00:00:00", "CustomerRingTime": hms(leg.ring),
        "DialOutName": "", "DynamicDID": "", "Event": "", "PickupTime": pickup, "Rating": "0",
        "RatingComments": "",
        "TransferType": "Agent Transfer" if leg.transferred else "No Transfers",
        "TransferredTo": _AGENTS[(leg.agent + 1) % len(_AGENTS)][1] if leg.transferred else "",
        "VideoRecordingURL": "", "WrapUpEndTime": ist(leg.end + wrap) if wrap else "",
        "WrapUpStartTime": ist(leg.end) if wrap else "",
    }  # fmt: skip


def callback_record(leg: SimLeg, config: OzonetelSimConfig) -> dict[str, Any]:
    """The leg as CDR in CallBacks and the push carry it: ``monitorUCID``, and the ``Apikey``."""
    agent_id, agent_name, phone = _AGENTS[leg.agent]
    campaign, skill = _CAMPAIGNS[leg.campaign]
    outbound = leg.kind != "InBound"
    status = "answered" if leg.answered else "NoAnswer"
    return {
        "monitorUCID": leg.monitor, "UUI": "", "Did": _DIDS[leg.campaign], "CampaignName": campaign,
        "Location": _LOCATIONS[leg.location], "CallerID": leg.customer,
        "PhoneName": agent_id if leg.answered else "", "Skill": "None" if outbound else skill,
        "StartTime": ist(leg.start), "EndTime": ist(leg.end),
        "TimeToAnswer": hms(leg.ring if leg.answered else 0),
        "CallDuration": hms(leg.end - leg.start), "Duration": hms(leg.talk),
        "FallBackRule": "AgentDial", "DialedNumber": leg.customer if outbound else "",
        "Type": leg.kind, "AgentID": agent_id if leg.answered else "",
        "AgentPhoneNumber": phone if leg.answered else "",
        "AgentUniqueID": str(101 + leg.agent) if leg.answered else "None",
        "AgentName": agent_name if leg.answered else "None",
        "Disposition": _DISPOSITIONS[leg.disposition] if leg.answered else "",
        "HangupBy": "AgentHangup" if leg.transferred else "UserHangup",
        "Status": "Answered" if leg.answered else "Unanswered", "AudioFile": _audio(leg),
        "TransferType": "Agent Transfer" if leg.transferred else "No Transfers",
        "TransferredTo": "", "Comments": "", "DialStatus": status, "Apikey": config.api_key,
        "AgentStatus": status if leg.answered else "", "CustomerStatus": status,
        "UserName": config.username, "CallerConfAudioFile": "", "ConfDuration": "00:00:00",
        "CampaignStatus": "ONLINE", "DataUniqueId": "", "CallCompleted": "TRUE",
        "ConferenceData": "",
    }  # fmt: skip


def _audio(leg: SimLeg) -> str:
    if not leg.answered:
        return ""
    return f"https://recordings.sim.ozonetel.invalid/sim-user/{leg.ucid}.mp3"


def draw_call(
    rng: random.Random,
    cfg: OzonetelSimConfig,
    *,
    serial: int,
    end: int,
    visible_at: float,
    live: bool,
) -> list[SimLeg]:
    """The legs (one, or two for a transfer) of call ``serial`` that ends at ``end``."""
    answered = rng.random() < cfg.answered_fraction
    outbound = rng.random() < cfg.outbound_fraction
    kind = rng.choice(_OUT_TYPES) if outbound else "InBound"
    ring = rng.randint(3, 30)
    talk = rng.randint(10, 600) if answered else 0
    two = answered and rng.random() < cfg.legs_fraction
    customer = f"9198{rng.randrange(10**8):08d}"
    picks = (rng.randrange(len(_AGENTS)), rng.randrange(len(_LOCATIONS)),
             rng.randrange(len(_DISPOSITIONS)))  # fmt: skip
    call_id = str(700_000_000 + serial)
    start = end - ring - talk
    first_ucid = str(8_571_000_000_000_000 + serial * 10)
    base = SimLeg(
        ucid=first_ucid, call_id=call_id, start=start, end=end,
        ring=ring, talk=talk, answered=answered, kind=kind, agent=picks[0], customer=customer,
        campaign=1 if outbound else 0, location=picks[1], disposition=picks[2],
        transferred=two, visible_at=visible_at, live=live,
        monitor=first_ucid,
    )  # fmt: skip
    if not two:
        return [base]
    # A transfer: the second leg (its own UCID, the same CallID) takes the call's second half.
    split = start + ring + talk // 2
    first = base._replace(end=split, talk=split - start - ring)
    ucid = str(int(base.ucid) + 1)
    second = base._replace(
        ucid=ucid, start=split, ring=2, talk=end - split - 2,
        agent=(base.agent + 1) % len(_AGENTS), transferred=False,
        monitor=base.ucid if cfg.transfer_legs else ucid,
    )  # fmt: skip
    return [first, second]
