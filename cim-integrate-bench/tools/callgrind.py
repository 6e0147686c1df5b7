"""Reading a callgrind profile written with `--dump-instr=yes` (positions `instr line`, one
event: Ir), for the scripts beside this one."""
import collections
import re


def executions(path):
    """(object, address) -> executions, and (object, address) -> function.

    A position is absolute (`0x...`), relative to the one before (`+N`, `-N`, decimal) or the same
    (`*`); the cost line after a `calls=` line is the inclusive cost of that call, not executions
    of the calling instruction."""
    names, counts, function = {}, collections.Counter(), {}

    def name(kind, value):
        m = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if not m:
            return value
        if m.group(2):
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)))

    def number(text):
        return int(text, 16) if text.startswith("0x") else int(text)

    def position(token, previous):
        if token.startswith("+"):
            return previous + number(token[1:])
        if token.startswith("-"):
            return previous - number(token[1:])
        if token == "*":
            return previous
        return number(token)

    obj = fn = None
    address, call_cost_next = 0, False
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = raw.rstrip("\n")
        if not line:
            continue
        for prefix, kind in (("ob=", "ob"), ("cob=", "ob"), ("fn=", "fn"), ("cfn=", "fn")):
            if line.startswith(prefix):
                value = name(kind, line[len(prefix):])
                if prefix == "ob=":
                    obj = value
                elif prefix == "fn=":
                    fn = value
                break
        else:
            if line.startswith("calls="):
                call_cost_next = True
                continue
            if line[0] not in "0123456789+-*":
                continue
            parts = line.split()
            address = position(parts[0], address)
            if call_cost_next:
                call_cost_next = False
                continue
            if len(parts) > 2:
                counts[(obj, address)] += int(parts[2])
                function[(obj, address)] = fn
    return counts, function
