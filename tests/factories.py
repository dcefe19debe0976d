"""factory_boy factories that build through the services, so test data obeys the
same rules as data entered in the portal."""

from __future__ import annotations

import factory

from permissions.matrix import BILLING_CONTACT, PLATFORM_ADMIN, TENANT_ADMIN
from portal.audit import Actor
from tenants import services
from tenants.models import BillfoldUser, Tenant

from .conftest import PASSWORD

ACTOR = Actor.system("tests")


class TenantFactory(factory.Factory):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda o: f"{o.slug.title()} Inc")
    currency = "USD"
    timezone = "UTC"
    billing_email = factory.LazyAttribute(lambda o: f"billing@{o.slug}.example")

    @classmethod
    def _create(cls, model_class, **kwargs):
        return services.create_tenant(ACTOR, kwargs)


class UserFactory(factory.Factory):
    class Meta:
        model = BillfoldUser

    tenant = factory.SubFactory(TenantFactory)
    role = TENANT_ADMIN
    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    first_name = "Test"
    last_name = factory.LazyAttribute(lambda o: o.username.title())

    @classmethod
    def _create(cls, model_class, tenant=None, **kwargs):
        return services.create_user(ACTOR, tenant, kwargs, PASSWORD)


def tenant_admin(tenant, username):
    return UserFactory(tenant=tenant, role=TENANT_ADMIN, username=username)


def billing_contact(tenant, username):
    return UserFactory(tenant=tenant, role=BILLING_CONTACT, username=username)


def platform_admin(username="operator"):
    return UserFactory(tenant=None, role=PLATFORM_ADMIN, username=username)
