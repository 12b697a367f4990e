"""gRPC servicers: thin adapters from the wire to the authorizer and the decision log."""

from tollgate.api._authorization import AuthorizationServicer, RequestLimits

__all__ = ["AuthorizationServicer", "RequestLimits"]
