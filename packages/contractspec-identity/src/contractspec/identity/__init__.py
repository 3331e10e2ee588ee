"""Users, organizations, memberships, RBAC policy engine and tenant isolation for ContractSpec apps.

```python
from contractspec.core import Executor, SpecRegistry
from contractspec.identity import register_identity

registry = SpecRegistry()
identity = register_identity(registry)
executor = Executor(registry, policy=identity.engine)
```

The SQL store is in `contractspec.identity.sql` (`pip install 'contractspec-identity[sql]'`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from contractspec.identity.engine import PolicyEngine
from contractspec.identity.model import (
    BUILTIN_PERMISSIONS,
    BUILTIN_ROLES,
    DEFAULT_RULES,
    AccessModel,
    AccessRule,
    Condition,
    Effect,
    MembershipStatus,
    Org,
    OrgMembership,
    Permission,
    PolicyBinding,
    Role,
    User,
    binding_entity,
    membership_entity,
    normalize_email,
    org_entity,
    permission_entity,
    role_entity,
    user_entity,
)
from contractspec.identity.operations import (
    ENTITIES,
    EVENTS,
    OPERATIONS,
    Identity,
    identity_specs,
    register_identity,
)
from contractspec.identity.stores import IdentityStore, MemoryIdentityStore

try:
    __version__ = version("contractspec-identity")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = (
    "BUILTIN_PERMISSIONS",
    "BUILTIN_ROLES",
    "DEFAULT_RULES",
    "ENTITIES",
    "EVENTS",
    "OPERATIONS",
    "AccessModel",
    "AccessRule",
    "Condition",
    "Effect",
    "Identity",
    "IdentityStore",
    "MembershipStatus",
    "MemoryIdentityStore",
    "Org",
    "OrgMembership",
    "Permission",
    "PolicyBinding",
    "PolicyEngine",
    "Role",
    "User",
    "__version__",
    "binding_entity",
    "identity_specs",
    "membership_entity",
    "normalize_email",
    "org_entity",
    "permission_entity",
    "register_identity",
    "role_entity",
    "user_entity",
)
