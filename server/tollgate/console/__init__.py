"""`tollgate console`: the web control plane for people, on the sidecars' state store.

Server-rendered pages (Starlette, Jinja2 with autoescaping, one stylesheet; every asset in the package), one
page per question a person asks. Everyone signs in as themselves; roles come from their groups (`roles` in the
console's config): viewer, approver, operator, admin (admin implies all; approver and operator imply viewer).

Adding a page (the registration pattern):

1. Add a module to `tollgate/console/pages/` (it is found by itself: every module there is imported and its
   `PAGES` registered; no shared list to edit).
2. Write each handler as `async def handler(request, visit) -> Response`, wrapped in `@require(role)` from
   `tollgate.console._web`. require runs on the server for every request: the person is signed in (else the
   sign-in page, or 403 for a POST), holds the role, and a POST carries this session's CSRF token from this
   console's origin. The app refuses to start with a page whose endpoint is not wrapped.
3. `PAGES = (Page("/path", handler, methods=("GET",), nav="Label", order=N, name="..."), ...)`; a page with
   nav is shown in the navigation to people holding its role. A form handler is its own Page with
   methods=("POST",).
4. In the handler: `visit.person` (Person: name, groups, via — from the credential, never from the form),
   `visit.roles`, `visit.has(role)` (finer checks, e.g. approvals' `may_decide` for the person's name),
   `await visit.field(name)` (a bounded form field), `visit.render("x.html", **context)` (templates in
   `templates/`, extending "base.html"; put `{{ m.csrf(visit) }}` from `_macros.html` in every POST form),
   `await visit.audit(action, target, detail)` after every change a person makes, `visit.console.stores`
   (state.Stores: kill switches, approvals, budgets, fleet, users, audit), `visit.console.decisions`
   (the decision log), `visit.console.clock`, `visit.console.config`.
5. No inline script or style (the CSP forbids them): a script, if any, is a file in `static/`.
"""

from tollgate.console._app import CSP, Console, create_app
from tollgate.console._config import ROLES, ConsoleConfig, ConsoleConfigError, load_console_config
from tollgate.console._decisions import DecisionReader, LocalDecisions
from tollgate.console._web import CSRF_FIELD, SIGNED_IN, Page, Visit, require, roles_of

__all__ = ["CSP", "CSRF_FIELD", "ROLES", "SIGNED_IN", "Console", "ConsoleConfig", "ConsoleConfigError",
           "DecisionReader", "LocalDecisions", "Page", "Visit", "create_app", "load_console_config", "require",
           "roles_of"]
