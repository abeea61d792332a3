"""ImagePin: the machine image is chosen once, and moves only when the stack's config says so.

`ami` forces the replacement of an EC2 instance (terraform-provider-aws
internal/service/ec2/ec2_instance.go: `ami` is ForceNew), and the lookup of the newest Ubuntu image
answers differently after every Canonical release. Fed straight into the instances, the first
`pulumi up` after a release replaced every VM and every Consul server, whatever else it was for.

The pin is a Pulumi dynamic resource. Its input `candidate` is what the program would choose today
(the lookup's answer, or the config's `amiId`); its output `image_id` is what the instances boot.
Its diff ignores a new candidate unless the choice is deliberate: the image generation
(`imageGeneration`) changed, or the candidate is an explicit `amiId` that changed. When the engine
sees no change it keeps the old outputs, so `image_id` stays the image chosen before, in preview
and in the update alike.

`ignore_changes=["ami"]` on the instances was the other way; it would ignore an explicit amiId
change too, and a VM replaced for another reason would keep the old image silently.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

# Inputs whose change is a deliberate move to another image (see image_moves).
DELIBERATE_INPUTS = ("generation", "explicit")


def image_moves(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    """Whether the pinned image moves to `news["candidate"]`.

    It moves when the generation changes, when the choice switches between looked-up and explicit,
    or when an explicit image (amiId) changes. A new looked-up candidate alone never moves it.
    """
    if any(olds.get(key) != news.get(key) for key in DELIBERATE_INPUTS):
        return True
    return bool(news.get("explicit")) and olds.get("candidate") != news.get("candidate")


class ImagePinProvider(ResourceProvider):
    """Creating the pin chooses the candidate; an update moves to it only when image_moves says so."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=str(props["candidate"]), outs=self._chosen(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=image_moves(olds, news), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._chosen(news))

    @staticmethod
    def _chosen(props: dict[str, Any]) -> dict[str, Any]:
        return {
            "candidate": props["candidate"],
            "explicit": bool(props.get("explicit")),
            "generation": props["generation"],
            "image_id": props["candidate"],
        }


class ImagePin(Resource, module="consul-tproxy-vms", name="ImagePin"):
    """The image every instance of the stack boots: chosen once, moved deliberately.

    `image_id` is declared with the candidate as its value: that is the choice a create (or a
    deliberate update) makes, and what a mock runtime, which echoes inputs, shows. On an `up` that
    changes nothing deliberate, the engine keeps the image_id in the state.
    """

    image_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        candidate: pulumi.Input[str],
        explicit: bool,
        generation: int,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            ImagePinProvider(),
            name,
            {"candidate": candidate, "explicit": explicit, "generation": generation, "image_id": candidate},
            opts,
        )
