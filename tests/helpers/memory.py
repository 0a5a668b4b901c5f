"""Memory of the running process, for the programs tests run under a memory limit (only the
standard library: it is imported after the limit is set)."""


def peak_mb() -> float:
    """The peak resident memory of this process since it started, in MB (VmHWM: unlike
    ru_maxrss, which Linux carries over from the parent that forked the process, it starts
    again at exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM line in /proc/self/status")
