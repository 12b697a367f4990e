package tollgate.lib.paths_test

import data.tollgate.lib.paths

test_normalize_folds_dot_and_dotdot if {
	paths.normalize("/workspace/a/../b/./c//d/") == ["workspace", "b", "c", "d"]
}

test_normalize_clamps_dotdot_at_root if {
	paths.normalize("/../../etc/passwd") == ["etc", "passwd"]
}

test_normalize_dotdot_popping_everything if {
	paths.normalize("/a/b/../../..") == []
}

test_normalize_pop_then_push_same_depth if {
	paths.normalize("/a/b/../c/../../d/e") == ["d", "e"]
}

test_normalize_rejects_too_many_segments if {
	not paths.normalize(concat("/", [s | some _ in numbers.range(1, 200); s := "a"]))
}

test_resolve_relative_against_root if {
	paths.resolve("src/../lib/x.py", "/workspace/app") == "/workspace/app/lib/x.py"
}

test_resolve_root_itself if {
	paths.resolve("/", "/workspace") == "/"
}

test_within_plain_file if {
	paths.within("/workspace/src/app.py", "/workspace")
}

test_within_workspace_root_itself if {
	paths.within("/workspace", "/workspace")
	paths.within("/workspace/", "/workspace/")
	paths.within(".", "/workspace")
	paths.within("", "/workspace")
}

test_within_relative_path if {
	paths.within("src/app.py", "/workspace")
	paths.within("./src/../README.md", "/workspace")
}

test_within_dotdot_that_stays_inside if {
	paths.within("/workspace/a/b/../../c", "/workspace")
}

test_within_escape_and_return_is_inside if {
	paths.within("/workspace/../workspace/x", "/workspace")
}

test_not_within_parent_traversal if {
	not paths.within("/workspace/../etc/passwd", "/workspace")
}

test_not_within_sibling_with_shared_prefix if {
	not paths.within("/workspacefoo/x", "/workspace")
	not paths.within("/workspace-other", "/workspace")
}

test_not_within_relative_escape if {
	not paths.within("../../etc/shadow", "/workspace/app")
	not paths.within("src/../../other/x", "/workspace/app")
}

test_not_within_parent_of_root if {
	not paths.within("/workspace/app/..", "/workspace/app")
}

test_not_within_unrelated_absolute if {
	not paths.within("/etc/passwd", "/workspace")
}

test_not_within_unresolvable_paths if {
	not paths.within("~/.ssh/id_rsa", "/workspace")
	not paths.within("..\\..\\etc\\passwd", "/workspace")
	not paths.within("/workspace/a\u0000/../../etc", "/workspace")
	not paths.within(42, "/workspace")
	not paths.within(["/workspace/a"], "/workspace")
}

test_not_within_relative_root if {
	not paths.within("/workspace/a", "workspace")
}

test_not_within_overlong_path if {
	long := concat("/", ["/workspace", concat("", [s | some _ in numbers.range(1, 5000); s := "a"])])
	not paths.within(long, "/workspace")
}

test_within_root_slash_allows_everything_absolute if {
	paths.within("/etc/passwd", "/")
}
