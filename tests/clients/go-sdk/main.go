// Command go-sdk calls the gateway with the AWS SDK for Go v2 (sagemakerruntime) and prints what
// it saw, one JSON object a line. It only reports: tests/test_client_go_sdk.py asserts.
//
//	go-sdk <scenario> <gateway-url>
//
// Scenarios: invoke, async, stream, stream-fail, model-error, validation, unavailable.
// A call that fails is reported as a line with "error" set; the exit status is non-zero only
// for a usage error or a line that cannot be printed.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/sagemakerruntime"
	"github.com/aws/aws-sdk-go-v2/service/sagemakerruntime/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// line is one JSON object on stdout.
type line map[string]any

var out = json.NewEncoder(os.Stdout)

func emit(l line) {
	if err := out.Encode(l); err != nil {
		fmt.Fprintln(os.Stderr, "cannot print:", err)
		os.Exit(2)
	}
}

// newClient is a client that does not sign (the gateway does), calls the gateway and never
// retries, so every request the SDK makes is one the test can count.
func newClient(url string) *sagemakerruntime.Client {
	return sagemakerruntime.New(sagemakerruntime.Options{
		Region:           "us-east-1",
		Credentials:      aws.AnonymousCredentials{},
		BaseEndpoint:     aws.String(url),
		Retryer:          aws.NopRetryer{},
		RetryMaxAttempts: 1,
	})
}

// metadata adds what the response itself says: its HTTP status and request id.
func metadata(l line, md middleware.Metadata) line {
	if raw, ok := awsmiddleware.GetRawResponse(md).(*smithyhttp.Response); ok {
		l["status"] = raw.StatusCode
	}
	if id, ok := awsmiddleware.GetRequestIDMetadata(md); ok {
		l["request_id"] = id
	}
	return l
}

// describe reports an error: which of the SDK's typed errors it is (found with errors.As),
// that error's own fields, and the HTTP status and request id of the answer that carried it.
func describe(l line, err error) line {
	l["error"] = err.Error()
	l["error_type"] = "unrecognised"
	var (
		modelErr       *types.ModelError
		streamErr      *types.ModelStreamError
		validationErr  *types.ValidationError
		unavailableErr *types.ServiceUnavailable
		internalErr    *types.InternalFailure
		internalStream *types.InternalStreamFailure
		apiErr         smithy.APIError
		responseErr    *awshttp.ResponseError
	)
	switch {
	case errors.As(err, &modelErr):
		l["error_type"] = "ModelError"
		l["message"] = modelErr.ErrorMessage()
		l["original_status_code"] = modelErr.OriginalStatusCode
		l["original_message"] = modelErr.OriginalMessage
		l["log_stream_arn"] = modelErr.LogStreamArn
	case errors.As(err, &streamErr):
		l["error_type"] = "ModelStreamError"
		l["message"] = streamErr.ErrorMessage()
		l["error_code"] = streamErr.ErrorCode_
	case errors.As(err, &validationErr):
		l["error_type"] = "ValidationError"
		l["message"] = validationErr.ErrorMessage()
	case errors.As(err, &unavailableErr):
		l["error_type"] = "ServiceUnavailable"
		l["message"] = unavailableErr.ErrorMessage()
	case errors.As(err, &internalErr):
		l["error_type"] = "InternalFailure"
		l["message"] = internalErr.ErrorMessage()
	case errors.As(err, &internalStream):
		l["error_type"] = "InternalStreamFailure"
		l["message"] = internalStream.ErrorMessage()
	}
	if errors.As(err, &apiErr) {
		l["api_error_code"] = apiErr.ErrorCode()
	}
	if errors.As(err, &responseErr) {
		l["status"] = responseErr.HTTPStatusCode()
		l["request_id"] = responseErr.ServiceRequestID()
	}
	return l
}

// invokeBody is every byte value and then some text: echo must return it byte for byte.
func invokeBody() []byte {
	body := make([]byte, 0, 256+32)
	for b := 0; b < 256; b++ {
		body = append(body, byte(b))
	}
	return append(body, []byte("go-sdk says hello\r\n\x00end")...)
}

func invoke(ctx context.Context, client *sagemakerruntime.Client) {
	input := &sagemakerruntime.InvokeEndpointInput{
		EndpointName:            aws.String("echo"),
		Body:                    invokeBody(),
		ContentType:             aws.String("application/x-go-sdk"),
		Accept:                  aws.String("application/x-go-sdk-answer"),
		CustomAttributes:        aws.String("trace=go-1;tenant=a b"),
		TargetModel:             aws.String("models/go-model.tar.gz"),
		TargetVariant:           aws.String("VariantGo"),
		TargetContainerHostname: aws.String("container-go"),
		InferenceId:             aws.String("go-inference-1"),
		EnableExplanations:      aws.String("`true`"),
		InferenceComponentName:  aws.String("ic-go-1"),
	}
	answer, err := client.InvokeEndpoint(ctx, input)
	l := line{"call": "InvokeEndpoint", "endpoint": "echo"}
	if err != nil {
		emit(describe(l, err))
		return
	}
	l["body"] = answer.Body // encoding/json writes []byte as base64
	l["content_type"] = answer.ContentType
	l["invoked_production_variant"] = answer.InvokedProductionVariant
	l["custom_attributes"] = answer.CustomAttributes
	l["new_session_id"] = answer.NewSessionId
	l["closed_session_id"] = answer.ClosedSessionId
	emit(metadata(l, answer.ResultMetadata))
}

func invokeAsync(ctx context.Context, client *sagemakerruntime.Client) {
	input := &sagemakerruntime.InvokeEndpointAsyncInput{
		EndpointName:             aws.String("async"),
		InputLocation:            aws.String("s3://bucket/go-sdk/input.json"),
		ContentType:              aws.String("application/json"),
		Accept:                   aws.String("application/json"),
		CustomAttributes:         aws.String("trace=go-async"),
		InferenceId:              aws.String("go-async-1"),
		RequestTTLSeconds:        aws.Int32(600),
		InvocationTimeoutSeconds: aws.Int32(900),
	}
	answer, err := client.InvokeEndpointAsync(ctx, input)
	l := line{"call": "InvokeEndpointAsync", "endpoint": "async"}
	if err != nil {
		emit(describe(l, err))
		return
	}
	l["inference_id"] = answer.InferenceId
	l["output_location"] = answer.OutputLocation
	l["failure_location"] = answer.FailureLocation
	emit(metadata(l, answer.ResultMetadata))
}

// streamBody is what the stream scenarios send; the emulator cuts it into the stream's parts.
const streamBody = "0123456789abcdefghijklmnopqrstuvwxyz"

// stream reads a response stream, one line per PayloadPart with its arrival time in
// milliseconds since the call started, then one "end" line with the reader's Err().
func stream(ctx context.Context, client *sagemakerruntime.Client, endpoint string) {
	input := &sagemakerruntime.InvokeEndpointWithResponseStreamInput{
		EndpointName:     aws.String(endpoint),
		Body:             []byte(streamBody),
		ContentType:      aws.String("text/plain"),
		Accept:           aws.String("text/x-parts"),
		CustomAttributes: aws.String("trace=go-stream"),
	}
	started := time.Now()
	since := func() float64 { return float64(time.Since(started).Microseconds()) / 1000 }
	answer, err := client.InvokeEndpointWithResponseStream(ctx, input)
	l := line{"call": "InvokeEndpointWithResponseStream", "endpoint": endpoint}
	if err != nil {
		emit(describe(l, err))
		return
	}
	l["event"] = "headers"
	l["at_ms"] = since()
	l["content_type"] = answer.ContentType
	l["invoked_production_variant"] = answer.InvokedProductionVariant
	l["custom_attributes"] = answer.CustomAttributes
	emit(metadata(l, answer.ResultMetadata))

	events := answer.GetStream()
	defer func() { _ = events.Close() }()
	index := 0
	for event := range events.Events() {
		switch part := event.(type) {
		case *types.ResponseStreamMemberPayloadPart:
			emit(line{"event": "part", "index": index, "at_ms": since(), "bytes": string(part.Value.Bytes)})
			index++
		case *types.UnknownUnionMember:
			emit(line{"event": "unknown", "tag": part.Tag, "at_ms": since()})
		default:
			emit(line{"event": "unexpected", "go_type": fmt.Sprintf("%T", event), "at_ms": since()})
		}
	}
	end := line{"event": "end", "at_ms": since(), "parts": index}
	if err := events.Err(); err != nil {
		end = describe(end, err)
	}
	emit(end)
}

// modelError calls the endpoint whose container answers 500: a 424 ModelError.
func modelError(ctx context.Context, client *sagemakerruntime.Client) {
	_, err := client.InvokeEndpoint(ctx, &sagemakerruntime.InvokeEndpointInput{
		EndpointName: aws.String("model-error"),
		Body:         []byte(`{"x": 1}`),
		ContentType:  aws.String("application/json"),
	})
	l := line{"call": "InvokeEndpoint", "endpoint": "model-error"}
	if err == nil {
		l["error"] = nil
		emit(l)
		return
	}
	emit(describe(l, err))
}

// validation sends what the SDK lets through but the API's model refuses (a TargetVariant one
// character over its 63, an endpoint name outside its pattern), then the longest TargetVariant
// the model allows.
func validation(ctx context.Context, client *sagemakerruntime.Client) {
	cases := []struct {
		name, endpoint, variant string
	}{
		{"target-variant-64", "echo", strings.Repeat("v", 64)},
		{"endpoint-name-invalid", "bad_name!", ""},
		{"target-variant-63", "echo", strings.Repeat("v", 63)},
	}
	for _, c := range cases {
		input := &sagemakerruntime.InvokeEndpointInput{
			EndpointName: aws.String(c.endpoint),
			Body:         []byte("validation"),
			ContentType:  aws.String("text/plain"),
		}
		if c.variant != "" {
			input.TargetVariant = aws.String(c.variant)
		}
		answer, err := client.InvokeEndpoint(ctx, input)
		l := line{"call": "InvokeEndpoint", "case": c.name, "endpoint": c.endpoint}
		if err != nil {
			emit(describe(l, err))
			continue
		}
		l["error"] = nil
		l["invoked_production_variant"] = answer.InvokedProductionVariant
		emit(metadata(l, answer.ResultMetadata))
	}
}

// unavailable calls the endpoint that answers 503 ServiceUnavailable, once (no retries).
func unavailable(ctx context.Context, client *sagemakerruntime.Client) {
	_, err := client.InvokeEndpoint(ctx, &sagemakerruntime.InvokeEndpointInput{
		EndpointName: aws.String("unavailable"),
		Body:         []byte("{}"),
	})
	l := line{"call": "InvokeEndpoint", "endpoint": "unavailable"}
	if err == nil {
		l["error"] = nil
		emit(l)
		return
	}
	emit(describe(l, err))
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go-sdk <scenario> <gateway-url>")
		os.Exit(2)
	}
	scenario, url := os.Args[1], os.Args[2]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := newClient(url)
	switch scenario {
	case "invoke":
		invoke(ctx, client)
	case "async":
		invokeAsync(ctx, client)
	case "stream":
		stream(ctx, client, "stream-5-300")
	case "stream-fail":
		stream(ctx, client, "stream-fail-2")
	case "model-error":
		modelError(ctx, client)
	case "validation":
		validation(ctx, client)
	case "unavailable":
		unavailable(ctx, client)
	default:
		fmt.Fprintln(os.Stderr, "unknown scenario:", scenario)
		cancel()
		os.Exit(2)
	}
}
