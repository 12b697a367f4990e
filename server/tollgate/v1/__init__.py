"""Generated from proto/tollgate/v1 by tools/gen_proto.py. Do not edit."""
