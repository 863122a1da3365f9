"""Who may change the study through the app: the admin setting (re-drawing the stratified sample)
and the annotator names a review, a new sample or a re-draw is recorded under."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mosaic_studio.studio.limits import MAX_NAME_CHARS

APP_ACTOR = "studio"  # creator of a "send to Annotate" sample when the app knows no names (open mode)


@dataclass(frozen=True)
class Access:
    """admin: may re-draw the stratified sample (`--admin`, MOSAIC_ADMIN=1).
    annotators: when given (MOSAIC_ANNOTATORS), the only names accepted. Under gradio auth the
    logged-in user (gr.Request.username) is the only name accepted, whatever is typed."""

    admin: bool = False
    annotators: tuple[str, ...] = ()

    @classmethod
    def of(cls, *, admin: bool = False, annotators: Iterable[str] | None = None) -> Access:
        return cls(bool(admin), tuple(name.strip() for name in annotators or () if name.strip()))

    def name(self, typed: str | None, request=None) -> str:
        """The checked name to record for `typed`; ValueError saying why it is refused."""
        name = (typed or "").strip()
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"the annotator name is {len(name):,} characters; at most {MAX_NAME_CHARS}")
        user = getattr(request, "username", None)
        if user:  # the login is who they are: a typed name cannot stand in for it
            if name and name != user:
                raise ValueError(f"you are logged in as {user!r}: review under that name (or leave the name empty)")
            name = user
        if not name:
            raise ValueError("enter your annotator name first")
        if self.annotators and name not in self.annotators:
            raise ValueError(f"{name!r} is not one of this study's annotators (MOSAIC_ANNOTATORS)")
        return name

    def creator(self, typed: str | None, request=None) -> str:
        """The actor of a new sample. With names restricted it is a checked name; in open mode,
        where any typed name is unverified anyway, an empty one is the app itself (the points are
        the app's proposals, nobody's review)."""
        restricted = bool(self.annotators) or bool(getattr(request, "username", None))
        if not restricted and not (typed or "").strip():
            return APP_ACTOR
        return self.name(typed, request)

    def check_admin(self) -> None:
        if not self.admin:
            raise ValueError(
                "re-drawing the stratified sample changes the study for everyone: it needs the admin "
                "setting (start the app with --admin or MOSAIC_ADMIN=1)"
            )


# A Python caller of the handlers (tests, scripts) already holds the store: no restriction.
DIRECT = Access(admin=True)
