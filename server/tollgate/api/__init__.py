"""gRPC servicers: thin adapters from the wire to the authorizer, the decision log and the bundle status."""

from tollgate.api._admin import AdminServicer, to_status_message
from tollgate.api._approvals import ApprovalServicer, StreamRoom
from tollgate.api._authorization import AuthorizationServicer, RequestLimits
from tollgate.api._authzen import AuthzenService, json_error

__all__ = ["AdminServicer", "ApprovalServicer", "AuthorizationServicer", "AuthzenService",
           "RequestLimits", "StreamRoom", "json_error", "to_status_message"]
