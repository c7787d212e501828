"""Render one simulated Acefone CDR as JSON text, on demand, from a handful of stored numbers.

Only what decides filtering and visibility is stored per record (start, duration, ring time,
flags); everything else (direction, agent, numbers, tokens) is derived from a hash of
(seed, serial) so a million records cost no memory. Rendering uses one string template, not a
dict plus ``json.dumps``, because page output must reach tens of thousands of rows a second.
All vocabulary below is ASCII without quotes or backslashes, so it is JSON-safe as is.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

_M64 = (1 << 64) - 1
_ODD1, _ODD2, _ODD3 = 0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB

# Flag bits of a record (stored in one byte per record).
ANSWERED = 0x01
LATE = 0x02
CHANGE_SHIFT = 2  # bits 2-3: what the one later change does
MALFORMED_SHIFT = 4  # bits 4-5: how the payload is broken, 0 = well-formed
CHANGE_RECORDING = 1  # an answered call's empty recording_url gets its URL
CHANGE_NOTES = 2  # notes goes from null to a note
CHANGE_STATUS = 3  # custom_status is set
MALFORMED_DATE = 1  # date = "2024-13-45"
MALFORMED_DURATION = 2  # call_duration = "abc"
MALFORMED_NO_TIME = 3  # the "time" key is missing

_AGENTS = (
    ("050109590016", "Aarav Sharma", "+919810011201"),
    ("050109590017", "Priya Nair", "+919810011202"),
    ("050109590018", "Rohan Mehta", "+919810011203"),
    ("050109590019", "Ananya Iyer", "+919810011204"),
    ("050109590020", "Vikram Singh", "+919810011205"),
    ("050109590021", "Sneha Kulkarni", "+919810011206"),
    ("050109590022", "Arjun Reddy", "+919810011207"),
    ("050109590023", "Kavya Menon", "+919810011208"),
    ("050109590024", "pqrs", "+919888889999"),
)
# The agent members of a record, rendered once per agent: (agent fields, missed_agents entry).
_AGENT_JSON = tuple(
    (
        f'"agent_number":"{number}","agent_number_with_prefix":"+919{number[3:]}",'
        f'"agent_name":"{name}"',
        f'[{{"id":"{agent_id}","name":"{name}","number":"{number}"}}]',
    )
    for agent_id, name, number in _AGENTS
)
_NO_AGENT_JSON = '"agent_number":null,"agent_number_with_prefix":null,"agent_name":null'
_DIDS = ("+918069858731", "+918069858732", "+918069010149", "+911140845566", "+912261234500")
_DEPARTMENTS = ("sales", "support", "billing")
_CIRCLES = tuple(
    f'{{"operator":"{operator}","circle":"{circle}"}}'
    for operator, circle in (
        ("Jio", "Delhi"),
        ("Airtel", "Mumbai"),
        ("Vi", "Karnataka"),
        ("Jio", "Maharashtra"),
        ("BSNL", "Kerala"),
        ("Airtel", "Tamil Nadu"),
        ("Vi", "Gujarat"),
    )
)
_NOTES = ("Customer asked for a callback", "Interested, send pricing", "Wrong number")
_STATUSES = ("Interested", "Follow up", "Not interested", "Converted")
_MISSED_REASONS = (
    ("no_answer", "No answer"),
    ("caller_hungup", "Normal clearing"),
    ("busy", "User busy"),
)


# (start, answer, end, and the readable local strings of start, start + 1 s, answer, end)
_Times = tuple[int, int, int, str, str, str, str]


def mix64(x: int) -> int:
    """Return the splitmix64 finaliser of ``x``: a cheap, well-spread deterministic hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _s(value: str | None) -> str:
    """JSON text of an optional, already JSON-safe string."""
    return "null" if value is None else f'"{value}"'


def _versioned(h3: int, flags: int, changed: bool, call_id: str) -> tuple[str, str, str]:
    """JSON of (recording_url, notes, custom_status): the fields the one later change touches."""
    change = (flags >> CHANGE_SHIFT) & 3
    rec_url = "null"
    if flags & ANSWERED:
        if change == CHANGE_RECORDING and not changed:
            rec_url = '""'  # recordings are processed after hang-up and filled in later
        else:
            token = f"{h3:016x}{(h3 * _ODD1) & _M64:016x}"
            rec_url = (
                f'"https://customer.servetel.in/file/recording?callId={call_id}'
                f'&type=rec&token={token}"'
            )
    notes = f'"{_NOTES[h3 % 3]}"' if change == CHANGE_NOTES and changed else "null"
    status = f'"{_STATUSES[(h3 >> 8) % 4]}"' if change == CHANGE_STATUS and changed else "null"
    return rec_url, notes, status


def _when(flags: int, ymd: str, hms: str, dur: int) -> tuple[str, str]:
    """JSON of the "date" and "time" members (with trailing comma) and of call_duration.

    A malformed record is broken the way a normalizer must notice: an impossible date, a
    non-numeric duration, or no "time" at all.
    """
    malformed = (flags >> MALFORMED_SHIFT) & 3
    date = "2024-13-45" if malformed == MALFORMED_DATE else ymd
    time = "" if malformed == MALFORMED_NO_TIME else f'"time":"{hms}",'
    return f'"date":"{date}",{time}', '"abc"' if malformed == MALFORMED_DURATION else str(dur)


def _aws(h3: int) -> str:
    """JSON of aws_call_recording_identifier: 32 hex digits (odd multipliers: cheap, distinct)."""
    return f'"{(h3 * _ODD2) & _M64:016x}{(h3 * _ODD3) & _M64:016x}"'


class LocalClock:
    """Format epoch seconds as the vendor's naive local strings, caching per hour and day."""

    __slots__ = ("_days", "_hms", "_offsets", "_tz")

    _HMS: tuple[str, ...] = ()

    def __init__(self, tz: ZoneInfo) -> None:
        self._tz = tz
        self._offsets: dict[int, int] = {}
        self._days: dict[int, tuple[str, str]] = {}
        if not LocalClock._HMS:  # one shared table of the 86 400 "HH:MM:SS" strings
            LocalClock._HMS = tuple(
                f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
            )
        self._hms = LocalClock._HMS

    def _offset(self, epoch: int) -> int:
        hour = epoch // 3600
        offset = self._offsets.get(hour)
        if offset is None:
            delta = dt.datetime.fromtimestamp(hour * 3600, self._tz).utcoffset()
            offset = int(delta.total_seconds()) if delta is not None else 0
            self._offsets[hour] = offset
        return offset

    def _names(self, day: int) -> tuple[str, str]:
        names = self._days.get(day)
        if names is None:
            date = dt.date.fromordinal(719163 + day)  # 719163 = ordinal of 1970-01-01
            names = (date.isoformat(), date.strftime("%d-%m-%Y"))
            self._days[day] = names
        return names

    def parts(self, epoch: int) -> tuple[str, str, str]:
        """Return ("YYYY-MM-DD", "DD-MM-YYYY", "HH:MM:SS") of ``epoch`` in the zone."""
        day, sec = divmod(epoch + self._offset(epoch), 86400)
        ymd, dmy = self._names(day)
        return ymd, dmy, self._hms[sec]

    def call_times(self, start: int, ans: int, end: int) -> tuple[str, ...]:
        """Return the local strings one record needs, computing the zone offset once.

        (date, time, readable start, readable start + 1 s, readable answer, readable end,
        end stamp); page output is dominated by these, hence the shortcut within one day.
        """
        off = self._offset(start)
        day, sec = divmod(start + off, 86400)
        end_sec = sec + end - start
        if end_sec + 1 >= 86400 or self._offset(end) != off:
            # Crosses midnight or a zone transition: take the slow, always-right path.
            ymd, dmy, start_hms = self.parts(start)
            rt = self.readable
            return (ymd, start_hms, f"{dmy} {start_hms}", rt(start + 1), rt(ans), rt(end),
                    self.stamp(end))  # fmt: skip
        ymd, dmy = self._names(day)
        hms = self._hms
        return (
            ymd,
            hms[sec],
            f"{dmy} {hms[sec]}",
            f"{dmy} {hms[sec + 1]}",
            f"{dmy} {hms[sec + ans - start]}",
            f"{dmy} {hms[end_sec]}",
            f"{ymd} {hms[end_sec]}",
        )

    def readable(self, epoch: int) -> str:
        """Return "DD-MM-YYYY HH:MM:SS", the format of call_flow's readableTime."""
        _, dmy, hms = self.parts(epoch)
        return f"{dmy} {hms}"

    def stamp(self, epoch: int) -> str:
        """Return "YYYY-MM-DD HH:MM:SS", the format of end_stamp and of the query bounds."""
        ymd, _, hms = self.parts(epoch)
        return f"{ymd} {hms}"


class PayloadRenderer:
    """Turn a record's stored numbers into the JSON text the vendor would send."""

    __slots__ = ("_clock", "_key", "_proc")

    def __init__(self, seed: int, tz: ZoneInfo) -> None:
        self._key = mix64(seed & _M64)
        # ObjectIds carry a 5-byte per-process value between timestamp and counter.
        self._proc = mix64(self._key ^ 0x5EED) & 0xFFFFFFFFFF
        self._clock = LocalClock(tz)

    def record_id(self, serial: int, vis: float) -> str:
        """Return the 24-hex id: ObjectId-like, stamped with the instant the row was inserted."""
        return f"{int(vis):08x}{self._proc:010x}{serial & 0xFFFFFF:06x}"

    def render(self, row: tuple[int, int, int, float, float, int, int], *, changed: bool) -> str:
        """Return the JSON text of a table row, in version 2 when ``changed`` is true.

        ``row`` is (start, dur, ring, vis, change_at, serial, flags); change_at is not read.
        """
        start, dur, ring, vis, _, serial, flags = row
        h1 = mix64(self._key ^ serial)
        h2 = mix64(h1)
        h3 = mix64(h2)
        answered = bool(flags & ANSWERED)
        inbound = (h1 & 0xFF) < 154  # about 60 % inbound
        did = _DIDS[(h1 >> 16) % len(_DIDS)]
        circle = _CIRCLES[(h1 >> 24) % len(_CIRCLES)]
        client = f"+91{6 + h2 % 4}{(h2 >> 2) % 1_000_000_000:09d}"
        call_id = f"{start}.{10_000_000 + serial * 7 + (h2 >> 40) % 7}"
        uuid = f"{start & 0xFFFFFFFF:08x}{(h2 >> 32) & 0xFFFFF:05x}"
        end = start + dur
        ans = start + ring
        # A missed inbound call sometimes never reached an agent: the caller hung up in the IVR.
        agent_no = (h1 >> 8) % len(_AGENTS)
        agent = _AGENTS[agent_no]
        has_agent = answered or not inbound or (h1 >> 36) & 1 == 0
        rec_url, notes, status = _versioned(h3, flags, changed, call_id)
        dept = _DEPARTMENTS[(h1 >> 40) % 4] if inbound and (h1 >> 40) % 4 < 3 else None
        if answered:
            reason = "disconnected_by_agent" if (h1 >> 44) & 1 else "disconnected_by_caller"
            cause = "Normal clearing"
        else:
            reason, cause = _MISSED_REASONS[(h1 >> 45) % 3]
        ymd, hms, rt_start, rt_next, rt_ans, rt_end, end_stamp = self._clock.call_times(
            start, ans, end
        )
        times = (start, ans, end, rt_start, rt_next, rt_ans, rt_end)
        if inbound:
            description = "Call answered by agent" if answered else "Call missed by agent"
            service, hint, caller_id_num = ("IVR,Department" if dept else "IVR"), "inbound", client
            flow = self._inbound_flow(
                call_id, times, dept=dept, agent=agent if has_agent else None, answered=answered
            )
        else:
            description = f"Call {'answered' if answered else 'not answered'} by customer"
            service, hint, caller_id_num = "Agent", "clicktocall", did
            flow = self._outbound_flow(
                call_id, times, uuid=uuid, client=client, did=did, agent=agent, answered=answered
            )
        agent_json, missed = _AGENT_JSON[agent_no]
        if answered or not inbound:
            missed = "[]"
        elif not has_agent:
            agent_json, missed = _NO_AGENT_JSON, "[]"
        contact = "null"
        if (h1 >> 48) % 5 == 0:
            contact = f'{{"name":"Customer {client[-4:]}","number":"{client}"}}'
        date_time, dur_json = _when(flags, ymd, hms, dur)
        dtmf = f'"{1 + (h1 >> 52) % 3}"' if inbound else "null"
        # Outbound click-to-call bills both legs, as the sample's 54 s call shows 2 minutes.
        minutes = -(-dur // 60) * (2 if answered and not inbound else 1)
        return (
            f'{{"id":"{int(vis):08x}{self._proc:010x}{serial & 0xFFFFFF:06x}",'
            f'"call_id":"{call_id}","uuid":"{uuid}",'
            f'"direction":"{"inbound" if inbound else "outbound"}",'
            f'"description":"{description}","detailed_description":null,'
            f'"status":"{"answered" if answered else "missed"}","blocked_number_id":null,'
            f'"recording_url":{rec_url},"service":"{service}",{date_time}'
            f'"end_stamp":"{end_stamp}","broadcast_id":null,'
            f'"dtmf_input":{dtmf},'
            f'"call_duration":{dur_json},"answered_seconds":{dur - ring if answered else 0},'
            f'"minutes_consumed":{minutes},"charges":0,"department_name":{_s(dept)},'
            f'{agent_json},"client_number":"{client}","did_number":"{did}",'
            f'"reason":"{reason}","hangup_cause":"{cause}","notes":{notes},'
            f'"contact_details":{contact},"missed_agents":{missed},"call_flow":{flow},'
            f'"accountid":"Demo Account",'
            f'"agent_ring_time":"{ring if answered and has_agent else "N.A."}",'
            f'"circle":{circle},'
            f'"agent_hangup_data":null,"transfer_missed_agent":[],"call_hint":"{hint}",'
            f'"support_api_call":false,"lead_id":null,"is_incoming_from_broadcast":false,'
            f'"caller_id_num":"{caller_id_num}","sip_agent_ids":null,"dialer_call_details":null,'
            f'"custom_status":{status},"voicemail_recording":false,'
            f'"aws_call_recording_identifier":{_aws(h3) if answered else "null"}}}'
        )

    def _inbound_flow(
        self,
        call_id: str,
        times: _Times,
        *,
        dept: str | None,
        agent: tuple[str, str, str] | None,
        answered: bool,
    ) -> str:
        """call_flow of an inbound call: init, IVR, department, agent leg, answer, hang-up."""
        start, ans, end, rt_start, rt_next, _, rt_end = times
        parts = [
            f'{{"type":"init","value":"{call_id}","time":"{start}","readableTime":"{rt_start}"}}',
            f'{{"type":"IVR","name":"Main IVR","time":{start},"readableTime":"{rt_start}"}}',
        ]
        if dept is not None:
            parts.append(
                f'{{"type":"Department","name":"{dept}","time":{start + 1},'
                f'"readableTime":"{rt_next}"}}'
            )
        if agent is not None:
            dialst = "Answered" if answered else "Missed"
            parts.append(
                f'{{"type":"Agent","id":"{agent[0]}","name":"{agent[1]}","dialst":"{dialst}",'
                f'"num":"{agent[2]}","time":{start + 1},"readableTime":"{rt_next}"}}'
            )
        if answered:
            parts.append(f'{{"anstime":{ans},"time":{end}}}')
        parts.append(f'{{"type":"hangup","time":{end},"readableTime":"{rt_end}"}}')
        return "[" + ",".join(parts) + "]"

    def _outbound_flow(
        self,
        call_id: str,
        times: _Times,
        *,
        uuid: str,
        client: str,
        did: str,
        agent: tuple[str, str, str],
        answered: bool,
    ) -> str:
        """call_flow of a click-to-call, shaped like the vendor's documented sample."""
        start, ans, end, rt_start, _, rt_ans, rt_end = times
        dialst = "Answered" if answered else "NoAnswer"
        tail = f'{{"anstime":{ans},"time":{end}}},' if answered else ""
        return (
            f'[{{"type":"init","value":"{call_id}","time":"{start}","readableTime":"{rt_start}"}},'
            f'{{"type":"Agent","id":"{agent[0]}","name":"{agent[1]}","dialst":"Dialed",'
            f'"num":"{agent[2]}","time":{start},"readableTime":"{rt_start}"}},'
            f'{{"type":"ClickToCall","name":"SIP/{client}@TATA-BLR-UNLIMITED-{did[3:]}_{uuid}",'
            f'"time":{start},"readableTime":"{rt_start}"}},'
            f'{{"type":"Agent","id":null,"name":null,"number":"{client[1:]}","time":{ans},'
            f'"dialst":"{dialst}","readableTime":"{rt_ans}"}},{tail}'
            f'{{"type":"hangup","time":{end},"readableTime":"{rt_end}"}}]'
        )
