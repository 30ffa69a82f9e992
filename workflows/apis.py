"""The Activity API: what happened to each notification, step by step."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import (
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.dates import TimestampField
from config.errors import ApiError, error_responses
from config.paging import (
    PAGE_PARAMETERS,
    page_of,
    paginate,
    query_filters_given,
    query_given,
)
from workflows import selectors
from workflows.models import Notification, Step

UNSUPPORTED_FILTERS = {"search", "topicKey", "subscriptionId", "contextKeys"}


class NotificationListApi(APIView):
    @extend_schema_serializer(component_name="Notification")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="NotificationStep")
        class StepSerializer(serializers.Serializer):
            stepId = serializers.CharField(source="step_id")
            type = serializers.CharField()
            status = serializers.CharField()
            position = serializers.IntegerField()
            outputs = serializers.JSONField()
            result = serializers.SerializerMethodField()
            dueAt = TimestampField(source="due_at")
            attempts = serializers.IntegerField()
            error = serializers.CharField()
            completedAt = TimestampField(source="completed_at", allow_null=True)

            def get_result(self, step: Step) -> dict[str, Any]:
                return selectors.step_result(step)

        @extend_schema_serializer(component_name="NotificationMessage")
        class MessageSerializer(serializers.Serializer):
            id = serializers.IntegerField()
            stepId = serializers.CharField(source="step.step_id")
            channel = serializers.CharField()
            provider = serializers.CharField()
            status = serializers.CharField()
            recipient = serializers.CharField()
            content = serializers.JSONField()
            error = serializers.CharField()
            sentAt = TimestampField(source="sent_at", allow_null=True)
            seenAt = TimestampField(source="seen_at", allow_null=True)
            readAt = TimestampField(source="read_at", allow_null=True)

        @extend_schema_serializer(component_name="NotificationJob")
        class JobSerializer(serializers.Serializer):
            """A step in the shape of Novu's job (novu-py's ActivityNotificationJobResponseDto),
            from selectors.notification_jobs."""

            @extend_schema_serializer(component_name="NotificationJobExecutionDetail")
            class ExecutionDetailSerializer(serializers.Serializer):
                _id = serializers.CharField()
                status = serializers.ChoiceField(
                    choices=["Success", "Warning", "Failed", "Pending"]
                )
                detail = serializers.CharField(help_text="what happened; a failure's reason")
                source = serializers.ChoiceField(choices=["Internal"])
                isRetry = serializers.BooleanField()
                isTest = serializers.BooleanField()
                createdAt = TimestampField(allow_null=True)

            @extend_schema_serializer(component_name="NotificationJobStep")
            class JobStepSerializer(serializers.Serializer):
                _id = serializers.CharField()
                _templateId = serializers.CharField(help_text="the workflow id")
                stepId = serializers.CharField()
                name = serializers.CharField()
                active = serializers.BooleanField()
                filters = serializers.ListField(child=serializers.DictField())

            _id = serializers.CharField()
            type = serializers.ChoiceField(
                # A digest, throttle, tool or http_request step is recorded when skipped.
                choices=sorted(
                    selectors.STEP_TYPES | selectors.UNSUPPORTED_STEP_TYPES | {"trigger"}
                ),
                help_text="trigger: the workflow's run, ended between steps (failed or "
                "canceled) or waiting for the bridge",
            )
            status = serializers.ChoiceField(choices=selectors.JOB_STATUSES)
            providerId = serializers.ChoiceField(
                choices=sorted({*selectors.NOVU_PROVIDER_IDS.values(), selectors.NORM_ITSELF})
            )
            step = JobStepSerializer()
            executionDetails = ExecutionDetailSerializer(many=True)
            createdAt = TimestampField()
            updatedAt = TimestampField()

        @extend_schema_serializer(component_name="NotificationSubscriber")
        class SubscriberSerializer(serializers.Serializer):
            """novu-py's ActivityNotificationSubscriberResponseDto: the only place it reads
            whom a notification was for (`_subscriberId` is norm's own id)."""

            _id = serializers.CharField(source="pk")
            subscriberId = serializers.CharField(source="subscriber_id")
            firstName = serializers.CharField(source="first_name", required=False)
            lastName = serializers.CharField(source="last_name", required=False)
            email = serializers.CharField(required=False)
            phone = serializers.CharField(required=False)

            def to_representation(self, instance: Any) -> dict[str, Any]:
                # An attribute never set is left out, as Novu's, not sent as "".
                data = super().to_representation(instance)
                return {name: value for name, value in data.items() if value != ""}

        @extend_schema_serializer(component_name="NotificationTemplate")
        class TemplateSerializer(serializers.Serializer):
            """novu-py's ActivityNotificationTemplateResponseDto: the workflow, named by
            its id (the bridge's workflows have no other name), triggered by it."""

            @extend_schema_serializer(component_name="NotificationTemplateTrigger")
            class TriggerSerializer(serializers.Serializer):
                type = serializers.ChoiceField(choices=["event"])
                identifier = serializers.CharField()
                variables = serializers.ListField(child=serializers.DictField())

            _id = serializers.CharField()
            name = serializers.CharField()
            triggers = TriggerSerializer(many=True)

        id = serializers.UUIDField()
        # novu-py's ActivityNotificationResponseDto requires the underscored four.
        _id = serializers.CharField(source="id")
        _environmentId = serializers.CharField(source="client_id")
        _organizationId = serializers.CharField(source="client_id")
        _subscriberId = serializers.CharField(source="subscriber_id")
        _templateId = serializers.CharField(source="workflow_id")
        transactionId = serializers.CharField(source="trigger_event.transaction_id")
        workflow = serializers.CharField(source="workflow_id")
        subscriberId = serializers.CharField(source="subscriber.subscriber_id")
        subscriber = SubscriberSerializer()
        template = serializers.SerializerMethodField()
        channels = serializers.SerializerMethodField(help_text="its steps' types, each once")
        status = serializers.CharField()
        error = serializers.CharField()
        errorCode = serializers.CharField(source="error_code")
        payload = serializers.JSONField(source="trigger_event.payload")
        createdAt = TimestampField(source="created_at")
        completedAt = TimestampField(source="completed_at", allow_null=True)
        steps = serializers.SerializerMethodField()
        messages = serializers.SerializerMethodField()
        jobs = serializers.SerializerMethodField()

        # Both read the prefetched steps and their messages: no query per notification.
        @extend_schema_field(StepSerializer(many=True))
        def get_steps(self, notification: Notification) -> list[dict[str, Any]]:
            return self.StepSerializer(notification.steps.all(), many=True).data

        @extend_schema_field(MessageSerializer(many=True))
        def get_messages(self, notification: Notification) -> list[dict[str, Any]]:
            steps = notification.steps.all()
            messages = [m for s in steps if (m := getattr(s, "message", None))]
            return self.MessageSerializer(messages, many=True).data

        @extend_schema_field(TemplateSerializer)
        def get_template(self, notification: Notification) -> dict[str, Any]:
            workflow = notification.workflow_id
            trigger = {"type": "event", "identifier": workflow, "variables": []}
            return {"_id": workflow, "name": workflow, "triggers": [trigger]}

        @extend_schema_field(serializers.ListField(child=serializers.CharField()))
        def get_channels(self, notification: Notification) -> list[str]:
            # As Novu's: what the `channels` filter matches, in the steps' order.
            return list(dict.fromkeys(step.type for step in notification.steps.all()))

        @extend_schema_field(JobSerializer(many=True))
        def get_jobs(self, notification: Notification) -> list[dict[str, Any]]:
            jobs = selectors.notification_jobs(notification)
            return self.JobSerializer(jobs, many=True).data

    class FilterSerializer(serializers.Serializer):
        transactionId = serializers.CharField(required=False)
        subscriberId = serializers.CharField(required=False)
        workflow = serializers.CharField(required=False)
        status = serializers.ChoiceField(choices=Notification.Status.choices, required=False)
        # novu-py's names, each repeatable: any of the values.
        subscriberIds = serializers.ListField(child=serializers.CharField(), required=False)
        templates = serializers.ListField(
            child=serializers.CharField(), required=False, help_text="workflow ids"
        )
        channels = serializers.ListField(
            child=serializers.ChoiceField(choices=sorted(selectors.STEP_TYPES)), required=False
        )
        emails = serializers.ListField(
            child=serializers.CharField(), required=False, help_text="subscribers' emails"
        )
        after = serializers.DateTimeField(required=False, help_text="created at or after")
        before = serializers.DateTimeField(required=False, help_text="created at or before")
        severity = serializers.ListField(
            child=serializers.ChoiceField(choices=["high", "medium", "low", "none"]),
            required=False,
            help_text="norm's notifications all have Novu's default, none",
        )

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            # Novu's filters that norm has nothing to match with: ignored, they would
            # answer every notification as if it matched. An empty one narrows nothing.
            unsupported = query_filters_given(self.initial_data, sorted(UNSUPPORTED_FILTERS))
            if unsupported:
                raise serializers.ValidationError(
                    {name: "norm cannot filter by this" for name in unsupported}
                )
            return attrs

    @extend_schema(
        operation_id="v1_notifications_list",
        tags=["Notifications"],
        summary="List notifications, newest first, with their steps and messages",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={
            200: page_of("NotificationPage", OutputSerializer(many=True)),
            **error_responses(400),
        },
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=query_given(request.query_params))
        filters.is_valid(raise_exception=True)
        notifications = selectors.notification_list(
            client_id=request.user.pk, filters=filters.validated_data
        )
        rows, meta = paginate(request, notifications)
        return Response({"data": self.OutputSerializer(rows, many=True).data, **meta})


class NotificationDetailApi(APIView):
    @extend_schema_serializer(component_name="NotificationResponse")
    class ResponseSerializer(serializers.Serializer):
        data = NotificationListApi.OutputSerializer()

    @extend_schema(
        operation_id="v1_notifications_retrieve",
        tags=["Notifications"],
        summary="Get a notification with its steps and messages",
        responses={200: ResponseSerializer, **error_responses(404)},
    )
    def get(self, request: Request, notification_id: str) -> Response:
        notification = selectors.notification_get(
            client_id=request.user.pk, notification_id=notification_id
        )
        if notification is None:
            raise ApiError(404, "notification_not_found", "Notification not found")
        return Response({"data": NotificationListApi.OutputSerializer(notification).data})
