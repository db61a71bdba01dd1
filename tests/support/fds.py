"""Python source that a test's child process runs to receive listening sockets as systemd passes
them (socket activation, sd_listen_fds(3)): the descriptors listed comma-separated in
``sys.argv[2]`` are moved to 3, 4, … — through high numbers first, so a descriptor that already
sits at a target is not overwritten before it is moved."""

MOVE_FDS_TO_3 = r"""
import fcntl, os, sys
given = [int(x) for x in sys.argv[2].split(",") if x]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
for fd in given:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
"""
