"""What the importer tells the operator on stderr, one line per finding.

Two kinds matter for the exit status: ``dropped`` means the Lsyncd config
asked for something the imported TOML does not do (the import is partial,
exit 2); ``note`` means the TOML does it, perhaps differently worded or with
a detail worth knowing (exit status unaffected). ``warning`` says that
``syncsup check`` will object to the result (overlapping targets, a missing
exclude file): the mapping itself was complete, the config needs a fix.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DROPPED", "NOTE", "WARNING", "Message", "Messages"]

DROPPED, NOTE, WARNING = "dropped", "note", "warning"


@dataclass(frozen=True)
class Message:
    level: str
    where: str
    text: str

    def line(self) -> str:
        """One line: newlines in values (file names can hold them) escaped."""
        text = f"{self.level}: {self.where}: {self.text}" if self.where else \
            f"{self.level}: {self.text}"
        return text.replace("\n", "\\n")


class Messages(list[Message]):
    """The findings of one import, in the order they were made."""

    def dropped(self, where: str, text: str) -> None:
        self.append(Message(DROPPED, where, text))

    def note(self, where: str, text: str) -> None:
        self.append(Message(NOTE, where, text))

    def warning(self, where: str, text: str) -> None:
        self.append(Message(WARNING, where, text))

    @property
    def partial(self) -> bool:
        return any(m.level == DROPPED for m in self)
