#!/usr/bin/env python3
"""Prints the dependency graph of otel-agent/src from its `use crate::` lines (test modules
left out): each top-level module with the folder `lib.rs` places it in (`#[path]`) and the
modules it uses, then the same between folders, and any cycle. docs/ARCHITECTURE.md states
the rule it checks: dependencies run one way.

  module_graph.py [SRC]      SRC defaults to otel-agent/src

Exit status 0, or 1 when modules or folders depend on each other in a cycle.
"""

import os
import re
import sys


def modules(src):
    """Top-level module name -> its file, as `lib.rs` declares them."""
    lib = open(os.path.join(src, "lib.rs")).read()
    found = {}
    for match in re.finditer(r'(?:#\[path = "([^"]+)"\]\s*)?pub(?:\(crate\))? mod (\w+);', lib):
        path, name = match.group(1), match.group(2)
        if path is None:
            path = name + ".rs" if os.path.exists(os.path.join(src, name + ".rs")) else name + "/mod.rs"
        found[name] = path
    return found


def files(src, path):
    """The files of a module: its own, and every file below its folder if it is a `mod.rs`."""
    if not path.endswith("mod.rs"):
        return [os.path.join(src, path)]
    return [os.path.join(folder, name)
            for folder, _, names in os.walk(os.path.join(src, os.path.dirname(path)))
            for name in names if name.endswith(".rs")]


def uses(text):
    """The top-level modules named after `crate::` outside the test module."""
    text = text.split("#[cfg(test)]\nmod tests", 1)[0]
    text = re.sub(r"//[^\n]*", "", text)
    used = set()
    for match in re.finditer(r"crate::(\{|[a-z_]+)", text):
        if match.group(1) != "{":
            used.add(match.group(1))
            continue
        depth, start, end = 1, match.end(), match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        depth, item = 0, ""
        for char in text[start:end - 1] + ",":
            depth += {"{": 1, "}": -1}.get(char, 0)
            if char == "," and depth == 0:
                names = re.findall(r"[a-z_][a-z_0-9]*", item)
                if names:
                    used.add(names[0])
                item = ""
            else:
                item += char
    return used


def cycles(graph):
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for next_node in graph.get(node, ()):
            if next_node not in index:
                visit(next_node)
                low[node] = min(low[node], low[next_node])
            elif next_node in on_stack:
                low[node] = min(low[node], index[next_node])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "otel-agent/src"
    declared = modules(src)
    folder = {name: path.split("/")[0] if "/" in path else "." for name, path in declared.items()}
    graph = {}
    for name, path in declared.items():
        used = set().union(*(uses(open(f).read()) for f in files(src, path)))
        graph[name] = {other for other in used if other != name and other in declared}
    for name in sorted(graph, key=lambda n: (folder[n], n)):
        print(f"{folder[name] + '/' + name:24} -> {' '.join(sorted(graph[name]))}")
    folders = {}
    for name, used in graph.items():
        folders.setdefault(folder[name], set()).update(folder[o] for o in used if folder[o] != folder[name])
    print()
    for name in sorted(folders):
        print(f"{name + '/':12} -> {' '.join(sorted(folders[name]))}")
    module_cycles, folder_cycles = cycles(graph), cycles(folders)
    print(f"\nmodule cycles: {module_cycles or 'none'}; folder cycles: {folder_cycles or 'none'}")
    return 1 if module_cycles or folder_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
