from .roles import ADMIN, OPERATOR, has_role, role_of


def roles(request) -> dict:
    """Lets templates hide buttons a user cannot use (the views check again on the server)."""
    user = getattr(request, "user", None)
    return {
        "role": role_of(user),
        "can_operate": has_role(user, OPERATOR),
        "is_admin": has_role(user, ADMIN),
    }
