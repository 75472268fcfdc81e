"""OpenAPI descriptions of our authentication schemes (loaded by drf-spectacular)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "fleet.auth.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "efu_… (operator API token)"}


# For views whose authentication class only speeds up DeviceTokenAuthentication (same tokens, same
# rule; fleet.auth.LeanDeviceTokenAuthentication): ``@extend_schema(auth=DEVICE_TOKEN_SCHEME)``.
DEVICE_TOKEN_SCHEME = [{"deviceToken": []}]


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "fleet.auth.DeviceTokenAuthentication"
    name = "deviceToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "efd_… (device token)"}
