package tollgate.arguments.filesystem_cwd_test

import data.tollgate.fixtures_test as fx
import data.tollgate.rules.tools

_manifest := {"workspace_from": "cwd", "workspace": "/workspace"}

_read(path, context) := object.union(fx.tool("claude-code", "", "Read", {"file_path": path}), {"context": context})

_denied(path, context, manifest) := codes if {
	codes := {d.code | some d in tools.deny} with input as _read(path, context)
		with data.agents["claude-code"] as object.union(data.agents["claude-code"], manifest)
}

test_the_workspace_is_the_harness_cwd if {
	count(_denied("/home/dev/app/src/main.py", {"cwd": "/home/dev/app"}, _manifest)) == 0
	_denied("/workspace/src/main.py", {"cwd": "/home/dev/app"}, _manifest) == {"path_outside_workspace"}
	_denied("/home/dev/app/../.ssh/id_ed25519", {"cwd": "/home/dev/app"}, _manifest) == {"path_outside_workspace"}
}

test_no_cwd_falls_back_to_the_manifest_workspace if {
	count(_denied("/workspace/src/main.py", {}, _manifest)) == 0
	_denied("/home/dev/app/main.py", {}, _manifest) == {"path_outside_workspace"}
}

test_an_unusable_cwd_is_no_workspace if {
	every cwd in ["/", "relative/dir", "/home/dev/app/../..", "/home//dev", 7] {
		_denied("/home/dev/app/main.py", {"cwd": cwd}, _manifest) == {"path_outside_workspace"}
	}
}

test_workspace_root_bounds_the_cwd if {
	bounded := object.union(_manifest, {"workspace_root": "/home"})
	count(_denied("/home/dev/app/x.py", {"cwd": "/home/dev/app"}, bounded)) == 0
	_denied("/etc/passwd", {"cwd": "/etc"}, bounded) == {"path_outside_workspace"}
}
