"""A command run in a real terminal (a pty) that then goes away, as when an SSH session drops: the
kernel sends SIGHUP to the session, and every later write to the terminal fails (EIO)."""

from __future__ import annotations

import os
import pty
import signal
import time


class Terminal:
    """``with Terminal(argv) as t: t.wait_for(b"..."); code = t.hang_up()``; the child is killed on
    leaving the block if it is still running (a failed assertion in between)."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None) -> None:
        self.pid, self.master = pty.fork()
        if self.pid == 0:  # the child: a session leader whose controlling terminal is the pty
            try:
                if cwd is not None:
                    os.chdir(cwd)
                os.execve(argv[0], argv, os.environ if env is None else env)
            finally:
                os._exit(127)
        self.status: int | None = None

    def wait_for(self, text: bytes, timeout: float = 60) -> bytes:
        """What the command drew until ``text`` appeared (AssertionError with the last of it if not)."""
        seen, deadline = b"", time.monotonic() + timeout
        while text not in seen and time.monotonic() < deadline:
            seen += os.read(self.master, 65536)
        assert text in seen, seen[-2000:].decode(errors="replace")
        return seen

    def hang_up(self, timeout: float = 30) -> int:
        """Close the terminal; the command's exit code once it ended (AssertionError if it did not)."""
        self._close()
        deadline = time.monotonic() + timeout
        while self.status is None and time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = status
            else:
                time.sleep(0.05)
        assert self.status is not None, "the command did not end after its terminal closed"
        assert os.WIFEXITED(self.status), f"ended by signal {os.WTERMSIG(self.status)}, not by itself"
        return os.WEXITSTATUS(self.status)

    def _close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
