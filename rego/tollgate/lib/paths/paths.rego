# METADATA
# title: Workspace paths
# description: >-
#   Lexical path normalisation and workspace confinement for filesystem arguments.
#   Paths are resolved against the workspace when relative, then "." and ".." segments are
#   folded the way a POSIX kernel would (".." at "/" stays at "/"). Anything that cannot be
#   resolved safely (backslashes, "~", NUL, over-long paths) is never inside a workspace.
package tollgate.lib.paths

# Upper bounds keep evaluation cheap on hostile input; real paths are far below them.
_max_path_chars := 4096

_max_segments := 128

# METADATA
# title: within
# description: >-
#   True when path (absolute, or relative to root) normalises to root itself or something
#   below it. root must be an absolute path.
within(path, root) if {
	_resolvable(path)
	is_string(root)
	startswith(root, "/")
	root_parts := normalize(root)
	parts := normalize(_absolute(path, root))
	count(parts) >= count(root_parts)
	array.slice(parts, 0, count(root_parts)) == root_parts
}

# METADATA
# title: normalize
# description: >-
#   The segments of an absolute path after folding "", "." and ".." segments, e.g.
#   "/workspace/a/../b/./c" -> ["workspace", "b", "c"]. Undefined for paths that are too long.
normalize(path) := parts if {
	count(path) <= _max_path_chars
	not _has_dot_segment(path)
	parts := [segment | some segment in split(path, "/"); segment != ""]
	count(parts) <= _max_segments
}

normalize(path) := [segment |
	some i, segment in parts
	segment != ".."
	_survives(depths, i)
] if {
	count(path) <= _max_path_chars
	_has_dot_segment(path)
	parts := [segment | some segment in split(path, "/"); not segment in {"", "."}]
	count(parts) <= _max_segments
	depths := _depths(parts)
}

# Most paths have no "." or ".." segment and need no folding.
_has_dot_segment(path) if regex.match(`(^|/)\.\.?(/|$)`, path)

# METADATA
# title: resolve
# description: The normalised absolute form of path (relative paths are taken from root), as a string.
resolve(path, root) := concat("/", ["", concat("/", normalize(_absolute(path, root)))])

_resolvable(path) if {
	is_string(path)
	not contains(path, "\\")
	not contains(path, "\u0000")
	not startswith(path, "~")
}

_absolute(path, _) := path if startswith(path, "/")

_absolute(path, root) := concat("/", [root, path]) if not startswith(path, "/")

# Depth of the directory stack after each segment, with ".." clamped at "/". For a walk of
# +1/-1 steps the clamped depth is the running sum minus the lowest running sum so far (if
# negative); this keeps the work to builtin calls instead of a recursive fold.
_depths(parts) := [depth |
	some i, running in sums
	depth := running - min({0, min(array.slice(sums, 0, i + 1))})
] if {
	steps := [_step(segment) | some segment in parts]
	sums := [sum(array.slice(steps, 0, i + 1)) | some i, _ in steps]
}

_step("..") := -1

_step(segment) := 1 if segment != ".."

# A pushed segment survives unless a later ".." pops the stack below its own depth.
_survives(depths, i) if i == count(depths) - 1

_survives(depths, i) if {
	i < count(depths) - 1
	min(array.slice(depths, i + 1, count(depths))) >= depths[i]
}
