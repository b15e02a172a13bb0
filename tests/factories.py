"""Factories for test data: the usual rows, made with as few arguments as a test needs."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from annotation.models import Comparison, Membership, Preference, Project, Prompt, Response, Role, content_hash


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests-1")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"Project {n}")
    slug = factory.Sequence(lambda n: f"project-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.ANNOTATOR


class PromptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prompt

    project = factory.SubFactory(ProjectFactory)
    text = factory.Sequence(lambda n: f"Question number {n}?")
    content_hash = factory.LazyAttribute(lambda o: content_hash(o.text if o.messages is None else o.messages))
    messages = None


class ResponseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Response

    prompt = factory.SubFactory(PromptFactory)
    text = factory.Sequence(lambda n: f"Answer number {n}.")
    content_hash = factory.LazyAttribute(lambda o: content_hash(o.text))
    source = "test-model"


def make_comparison(*, project: Project | None = None, **fields) -> Comparison:
    """A comparison of two fresh responses to one fresh prompt, in canonical (a < b) order."""
    prompt = PromptFactory(project=project) if project else PromptFactory()
    first, second = ResponseFactory(prompt=prompt), ResponseFactory(prompt=prompt)
    return Comparison.objects.create(
        project=prompt.project, prompt=prompt, response_a=first, response_b=second, **fields
    )


def make_preference(*, comparison: Comparison, annotator, choice: str = "a", strength: int | None = 2) -> Preference:
    return Preference.objects.create(
        project=comparison.project, comparison=comparison, annotator=annotator, choice=choice, strength=strength
    )
