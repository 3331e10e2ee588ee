"""Users, organizations, memberships, RBAC policy engine and tenant isolation for ContractSpec apps.

```python
from contractspec.core import Executor, SpecRegistry
from contractspec.identity import register_identity

registry = SpecRegistry()
identity = register_identity(registry)
executor = Executor(registry, policy=identity.engine)
```

The SQL store is in `contractspec.identity.sql` (`pip install 'contractspec-identity[sql]'`);
`contractspec.identity.sync.PolicySync` keeps engines of several processes fresh
(`identity.sync(unit_of_work)`).
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
    Group,
    GroupMember,
    MembershipStatus,
    Org,
    OrgMembership,
    Permission,
    PolicyBinding,
    ResourceType,
    Role,
    User,
    binding_entity,
    group_entity,
    group_member_entity,
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
from contractspec.identity.stores import (
    IdentitySnapshot,
    IdentityStore,
    MemoryIdentityStore,
    identity_version,
)

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
    "Group",
    "GroupMember",
    "Identity",
    "IdentitySnapshot",
    "IdentityStore",
    "MembershipStatus",
    "MemoryIdentityStore",
    "Org",
    "OrgMembership",
    "Permission",
    "PolicyBinding",
    "PolicyEngine",
    "ResourceType",
    "Role",
    "User",
    "__version__",
    "binding_entity",
    "group_entity",
    "group_member_entity",
    "identity_specs",
    "identity_version",
    "membership_entity",
    "normalize_email",
    "org_entity",
    "permission_entity",
    "register_identity",
    "role_entity",
    "user_entity",
)
