"""The one protection status a patient sees, in the panel and in ``livedeid run``.

Four states, each from what was *measured*, never from a switch alone:

* ``protected``: the person wears a personal cloak whose held-out verification met its
  target for every recogniser (the profile's verification record), and no live check
  recognised them since. Says when the cloak was verified.
* ``partly protected``: the generic model, whose held-out evaluation (the model manifest)
  says recognisers still match a share of protected faces; or a cloak whose verification
  missed its target; or a verified cloak the live privacy check recognised just now.
* ``not protected``: protection is switched off, or the model's protection was never
  measured (untrained, or no held-out evaluation) and no verified cloak is worn.
* ``hidden``: the fail-closed policy is hiding a face (or, at start, the whole picture)
  right now. It says nothing about the cloak or model; their state is in the details.

Patient-facing words are plain (``summary``); recogniser names and numbers go into
``details``, which the panel puts behind a disclosure. Colours: green only for
``protected``. Nothing here imports Qt or the CLI: both show what this module says.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from livedeid.inference.manifest import MEASURED_RECOGNISERS, SELF_MATCH_TARGET, ModelSpec
from livedeid.io.profile import Profile

PROTECTED = "protected"
PARTLY = "partly protected"
NOT_PROTECTED = "not protected"
HIDDEN = "hidden"
STATES = (PROTECTED, PARTLY, NOT_PROTECTED, HIDDEN)

# The colour of each state (the panel's badge; `run` colours its line with the same meaning).
COLOURS = {PROTECTED: "#1a7f37", PARTLY: "#9a6700", NOT_PROTECTED: "#b62324", HIDDEN: "#1f6feb"}
ANSI = {PROTECTED: "\033[1;32m", PARTLY: "\033[1;33m", NOT_PROTECTED: "\033[1;31m", HIDDEN: "\033[1;34m"}
RECOGNISER_LABELS = {"dlib": "dlib", "sface": "SFace"}


@dataclass(frozen=True)
class ProtectionStatus:
    state: str          # one of STATES
    summary: str        # one or two plain sentences for the patient
    details: str        # recogniser names and the measured numbers behind the state
    verified_on: str | None = None  # the cloak's verification date (protected / partly by a cloak)
    underlying: str | None = None   # while HIDDEN: the state of the faces that are not hidden

    @property
    def headline(self) -> str:
        return self.state[0].upper() + self.state[1:]

    @property
    def colour(self) -> str:
        return COLOURS[self.state]

    def line(self, colour: bool = False) -> str:
        """The status as one terminal line (``livedeid run``)."""
        head = f"protection: {self.state.upper()}"
        if colour:
            head = f"{ANSI[self.state]}{head}\033[0m"
        return f"{head} - {self.summary}"


def _percent(share: float) -> str:
    return f"{share * 100:.0f} %"


def _shares(figures: dict[str, float]) -> str:
    """``dlib 85 %, SFace 100 %``."""
    return ", ".join(f"{RECOGNISER_LABELS.get(n, n)} {_percent(s)}" for n, s in sorted(figures.items()))


def _range(figures: dict[str, float]) -> str:
    """``85-100 %`` (or ``100 %``) over the recognisers' shares."""
    lo, hi = min(figures.values()), max(figures.values())
    return _percent(hi) if round(lo * 100) == round(hi * 100) else f"{lo * 100:.0f}-{_percent(hi)}"


def verification_date(profile: Profile) -> str:
    """When the cloak was verified, as a date a patient reads (``3 May 2025``): enrolment
    verifies the cloak on held-out images just before the profile is written, so the
    profile's creation time is the verification's."""
    try:
        when = _dt.datetime.fromisoformat(profile.created)
    except (TypeError, ValueError):
        return profile.created or "an unknown date"
    return f"{when.day} {when:%B %Y}"


def cloak_figures(profile: Profile) -> dict[str, float]:
    """The cloak's held-out gallery match per recogniser, from its verification record."""
    recs = profile.verification.get("recognizers") or {}
    return {name: float(fig["gallery_match"]) for name, fig in recs.items()
            if isinstance(fig, dict) and isinstance(fig.get("gallery_match"), (int, float))}


def _model_details(spec: ModelSpec) -> str:
    if not spec.trained:
        return f"Model '{spec.name}' has no trained weights: its output is not de-identified."
    measured = spec.held_out_self_match or {}
    if not measured:
        return f"Model '{spec.name}' was never measured on people it did not see in training."
    missing = [r for r in MEASURED_RECOGNISERS if r not in measured]
    text = (f"Model '{spec.name}', on people it never saw: {_shares(measured)} of protected faces still "
            f"matched (target at most {_percent(SELF_MATCH_TARGET)}).")
    return text + (f" Never measured against {', '.join(missing)}." if missing else "")


def _model_basis(spec: ModelSpec) -> tuple[str, str]:
    """(state, summary) of faces the generic model protects."""
    measured = spec.held_out_self_match or {}
    unmeasured = [r for r in MEASURED_RECOGNISERS if r not in measured]
    if not spec.trained or not measured or unmeasured:
        return NOT_PROTECTED, ("The filter is on, but it has not been shown to stop face recognition. "
                               "Treat your face as visible.")
    if max(measured.values()) > SELF_MATCH_TARGET:
        return PARTLY, (f"The filter is on, but in tests face-recognition software still recognised "
                        f"{_range(measured)} of people. A personal cloak made for you may protect better.")
    return PARTLY, ("The filter stopped face recognition on the people it was tested on, but it has not been "
                    "checked for you. A personal cloak made for you can be checked.")


def _cloak_details(profile: Profile) -> str:
    figures = cloak_figures(profile)
    v = profile.verification
    target = float(v.get("target", SELF_MATCH_TARGET))
    if not figures:
        return f"Personal cloak '{profile.name}': no verification figures."
    probes = v.get("probes")
    on = f" on {probes} pictures held out from enrolment" if probes else ""
    return (f"Personal cloak '{profile.name}', verified {profile.created}{on}: {_shares(figures)} still matched "
            f"the person's own photos (target at most {_percent(target)}).")


def measured_status(spec: ModelSpec, profile: Profile | None, recognised_now: tuple[str, ...] = ()
                    ) -> ProtectionStatus:
    """What protection on gives, from the measurements: the cloak's when one is worn and
    verified (figures present), else the model's. ``recognised_now``: recognisers that
    matched the outgoing video in the live check (the panel's privacy meter)."""
    model = _model_details(spec)
    if profile is not None and cloak_figures(profile):
        date = verification_date(profile)
        details = f"{_cloak_details(profile)} Other faces get the general model. {model}"
        if profile.protects and not recognised_now:
            return ProtectionStatus(PROTECTED, f"Your personal cloak was checked for you on {date}: face-recognition "
                                    "software did not recognise you in the test pictures.", details, date)
        if profile.protects:
            names = ", ".join(RECOGNISER_LABELS.get(n, n) for n in recognised_now)
            return ProtectionStatus(PARTLY, f"Your personal cloak was checked for you on {date}, but the live check "
                                    "recognised you in the video just now.",
                                    f"{details} Live check: {names} matched the outgoing video.", date)
        figures = cloak_figures(profile)
        return ProtectionStatus(PARTLY, f"Your personal cloak was checked on {date}, but face-recognition software "
                                f"still recognised you in up to {_percent(max(figures.values()))} of the test "
                                "pictures. Enrolling again may help.", details, date)
    state, summary = _model_basis(spec)
    unverified = (f" Personal cloak '{profile.name}' has no verification figures, so it counts for nothing here."
                  if profile is not None else "")
    return ProtectionStatus(state, summary, model + unverified)


def protection_status(spec: ModelSpec, profile: Profile | None, *, protect: bool = True,
                      sending_unprotected: bool = False, hidden_regions: int = 0, whole_picture_hidden: bool = False,
                      recognised_now: tuple[str, ...] = ()) -> ProtectionStatus:
    """The status to show now. ``hidden_regions``: faces (regions) the fail-closed policy
    hides in the newest frame; ``whole_picture_hidden``: the start-up guard hides all of it
    (no face found yet)."""
    if not protect:
        where = ("and it is being sent to the video call." if sending_unprotected else
                 "here only: the video call receives nothing.")
        return ProtectionStatus(NOT_PROTECTED, f"Protection is off. Your real face is shown {where}",
                                "The filter is switched off: nothing is changed in the video.")
    basis = measured_status(spec, profile, recognised_now)
    if whole_picture_hidden or hidden_regions:
        summary = ("The picture is hidden until your face is found." if whole_picture_hidden else
                   "A face is hidden right now because the filter cannot follow it closely enough. "
                   "It shows again once the face is found.")
        return ProtectionStatus(HIDDEN, summary, f"Faces not hidden: {basis.state}. {basis.details}",
                                basis.verified_on, basis.state)
    return basis


class StatusChanges:
    """Reports a status once it has held for ``hold_s`` seconds of frame time, so a face
    hidden for two frames does not make the line (or the badge) flicker. The first status
    is reported at once."""

    def __init__(self, hold_s: float = 0.5):
        self.hold_s = float(hold_s)
        self.shown: ProtectionStatus | None = None
        self._pending: ProtectionStatus | None = None
        self._since = 0.0

    def show(self, status: ProtectionStatus) -> ProtectionStatus:
        """Show ``status`` at once (the user switched something: no reason to wait)."""
        self.shown, self._pending = status, None
        return status

    def update(self, status: ProtectionStatus, t: float) -> ProtectionStatus | None:
        """The status to show now if it changed (None: keep what is shown)."""
        if self.shown is None:
            self.shown = status
            return status
        if status == self.shown:
            self._pending = None
            return None
        if status != self._pending:
            self._pending, self._since = status, t
        if t - self._since >= self.hold_s:
            self.shown, self._pending = status, None
            return status
        return None
