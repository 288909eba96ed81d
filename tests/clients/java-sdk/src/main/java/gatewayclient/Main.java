package gatewayclient;

import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;
import java.util.Locale;
import java.util.concurrent.CompletionException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Collectors;
import software.amazon.awssdk.auth.credentials.AnonymousCredentialsProvider;
import software.amazon.awssdk.awscore.exception.AwsServiceException;
import software.amazon.awssdk.awscore.retry.AwsRetryStrategy;
import software.amazon.awssdk.core.SdkBytes;
import software.amazon.awssdk.core.exception.SdkException;
import software.amazon.awssdk.core.exception.SdkServiceException;
import software.amazon.awssdk.http.SdkHttpResponse;
import software.amazon.awssdk.http.apache.ApacheHttpClient;
import software.amazon.awssdk.http.nio.netty.NettyNioAsyncHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.sagemakerruntime.SageMakerRuntimeAsyncClient;
import software.amazon.awssdk.services.sagemakerruntime.SageMakerRuntimeClient;
import software.amazon.awssdk.services.sagemakerruntime.model.InvokeEndpointRequest;
import software.amazon.awssdk.services.sagemakerruntime.model.InvokeEndpointResponse;
import software.amazon.awssdk.services.sagemakerruntime.model.InvokeEndpointWithResponseStreamRequest;
import software.amazon.awssdk.services.sagemakerruntime.model.InvokeEndpointWithResponseStreamResponseHandler;
import software.amazon.awssdk.services.sagemakerruntime.model.ModelErrorException;
import software.amazon.awssdk.services.sagemakerruntime.model.ModelStreamErrorException;

/**
 * Calls the gateway with the AWS SDK for Java 2.x and prints what it saw, one JSON object a
 * line. It only reports: the Python test decides what is right.
 *
 * <p>Usage: {@code Main <scenario> <gateway-url>}. Every value sent is fixed here and printed
 * in a {@code sent} line, so the test can compare the emulator's journal with it.
 */
public final class Main {
    private Main() {}

    public static void main(String[] args) {
        if (args.length != 2) {
            System.err.println("usage: Main <scenario> <gateway-url>");
            System.exit(2);
        }
        String scenario = args[0];
        URI url = URI.create(args[1]);
        switch (scenario) {
            case "invoke-all-headers" -> invokeAllHeaders(url);
            case "session" -> session(url);
            case "model-error" -> invokeExpectingError(url, "model-error", null);
            case "invalid-name" -> invokeExpectingError(url, "bad_name!", null);
            case "long-variant" -> invokeExpectingError(url, "echo", "v".repeat(64));
            case "unavailable" -> invokeExpectingError(url, "unavailable", null);
            case "stream" -> stream(url, "stream-5-300");
            case "stream-fail" -> stream(url, "stream-fail-2");
            default -> {
                System.err.println("unknown scenario: " + scenario);
                System.exit(2);
            }
        }
        // The Netty client's event loop threads must not keep the JVM alive.
        System.exit(0);
    }

    static SageMakerRuntimeClient syncClient(URI url) {
        return SageMakerRuntimeClient.builder()
                .region(Region.US_EAST_1)
                .credentialsProvider(AnonymousCredentialsProvider.create())
                .endpointOverride(url)
                .httpClientBuilder(ApacheHttpClient.builder())
                .overrideConfiguration(c -> c
                        .retryStrategy(AwsRetryStrategy.doNotRetry())
                        .apiCallTimeout(Duration.ofSeconds(30)))
                .build();
    }

    static SageMakerRuntimeAsyncClient asyncClient(URI url) {
        return SageMakerRuntimeAsyncClient.builder()
                .region(Region.US_EAST_1)
                .credentialsProvider(AnonymousCredentialsProvider.create())
                .endpointOverride(url)
                .httpClientBuilder(NettyNioAsyncHttpClient.builder())
                .overrideConfiguration(c -> c
                        .retryStrategy(AwsRetryStrategy.doNotRetry())
                        .apiCallTimeout(Duration.ofSeconds(30)))
                .build();
    }

    /** Every byte value, so an echo that changed, re-encoded or dropped one is seen. */
    static byte[] everyByte() {
        byte[] body = new byte[256];
        for (int i = 0; i < body.length; i++) {
            body[i] = (byte) i;
        }
        return body;
    }

    /** InvokeEndpoint on echo with every header the SDK exposes for it. */
    static void invokeAllHeaders(URI url) {
        byte[] body = everyByte();
        InvokeEndpointRequest request = InvokeEndpointRequest.builder()
                .endpointName("echo")
                .body(SdkBytes.fromByteArray(body))
                .contentType("application/x-gateway-test")
                .accept("application/x-gateway-test, application/json")
                .customAttributes("trace=java-1;tenant=a b")
                .targetVariant("VariantJava")
                .targetContainerHostname("container-2")
                .inferenceId("java-inference-1")
                .enableExplanations("`false`")
                .inferenceComponentName("ic-java")
                .sessionId("NEW_SESSION")
                .targetModel("models/java.tar.gz")
                .build();
        sent(request, body).print();
        try (SageMakerRuntimeClient client = syncClient(url)) {
            response(client.invokeEndpoint(request)).print();
        } catch (SdkException e) {
            error(e).print();
        }
    }

    /** A session opened with NEW_SESSION, joined, then closed with the emulator's close body. */
    static void session(URI url) {
        try (SageMakerRuntimeClient client = syncClient(url)) {
            InvokeEndpointRequest.Builder call = InvokeEndpointRequest.builder()
                    .endpointName("echo")
                    .contentType("application/json");
            InvokeEndpointResponse opened = client.invokeEndpoint(
                    call.body(SdkBytes.fromUtf8String("{}")).sessionId("NEW_SESSION").build());
            response(opened).put("step", "open").print();
            String sessionId = opened.newSessionId().split(";")[0].trim();
            InvokeEndpointResponse joined = client.invokeEndpoint(
                    call.body(SdkBytes.fromUtf8String("{\"n\": 1}")).sessionId(sessionId).build());
            response(joined).put("step", "join").put("session_id", sessionId).print();
            InvokeEndpointResponse closed = client.invokeEndpoint(call
                    .body(SdkBytes.fromUtf8String("{\"close_session\": true}"))
                    .sessionId(sessionId)
                    .build());
            response(closed).put("step", "close").put("session_id", sessionId).print();
        } catch (SdkException e) {
            error(e).print();
        }
    }

    /** One InvokeEndpoint expected to fail; the exception the SDK raised is what is printed. */
    static void invokeExpectingError(URI url, String endpoint, String targetVariant) {
        InvokeEndpointRequest request = InvokeEndpointRequest.builder()
                .endpointName(endpoint)
                .body(SdkBytes.fromUtf8String("{\"x\": 1}"))
                .contentType("application/json")
                .targetVariant(targetVariant)
                .build();
        try (SageMakerRuntimeClient client = syncClient(url)) {
            response(client.invokeEndpoint(request)).print();
        } catch (SdkException e) {
            error(e).print();
        }
    }

    /** InvokeEndpointWithResponseStream with the async client: each part as it arrives. */
    static void stream(URI url, String endpoint) {
        byte[] body = "abcdefghij".getBytes(StandardCharsets.US_ASCII);
        InvokeEndpointWithResponseStreamRequest request = InvokeEndpointWithResponseStreamRequest
                .builder()
                .endpointName(endpoint)
                .body(SdkBytes.fromByteArray(body))
                .contentType("text/plain")
                .accept("text/plain")
                .customAttributes("trace=java-stream")
                .build();
        new JsonLine("sent")
                .put("endpoint", endpoint)
                .put("body_b64", Base64.getEncoder().encodeToString(body))
                .print();
        AtomicInteger index = new AtomicInteger();
        long started = System.nanoTime();
        InvokeEndpointWithResponseStreamResponseHandler handler =
                InvokeEndpointWithResponseStreamResponseHandler.builder()
                        .onResponse(r -> new JsonLine("response")
                                .put("status", r.sdkHttpResponse().statusCode())
                                .put("content_type", r.contentType())
                                .put("invoked_variant", r.invokedProductionVariant())
                                .put("custom_attributes", r.customAttributes())
                                .put("header_names", headerNames(r.sdkHttpResponse()))
                                .put("ms", elapsedMs(started))
                                .print())
                        .subscriber(InvokeEndpointWithResponseStreamResponseHandler.Visitor
                                .builder()
                                .onPayloadPart(part -> new JsonLine("part")
                                        .put("index", index.getAndIncrement())
                                        .put("ms", elapsedMs(started))
                                        .put("bytes_b64", Base64.getEncoder()
                                                .encodeToString(part.bytes().asByteArray()))
                                        .print())
                                .onDefault(other -> new JsonLine("other-event")
                                        .put("type", String.valueOf(other.sdkEventType()))
                                        .put("ms", elapsedMs(started))
                                        .print())
                                .build())
                        .build();
        // Not closed: closing waits out the Netty event loop's 2 s quiet period, and main ends
        // the JVM with System.exit as soon as the call has ended.
        SageMakerRuntimeAsyncClient client = asyncClient(url);
        try {
            client.invokeEndpointWithResponseStream(request, handler).join();
            new JsonLine("complete").put("ms", elapsedMs(started)).print();
        } catch (CompletionException e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            error(cause).put("ms", elapsedMs(started)).print();
        }
    }

    static double elapsedMs(long started) {
        return (System.nanoTime() - started) / 1_000_000.0;
    }

    static JsonLine sent(InvokeEndpointRequest r, byte[] body) {
        return new JsonLine("sent")
                .put("endpoint", r.endpointName())
                .put("body_b64", Base64.getEncoder().encodeToString(body))
                .put("content_type", r.contentType())
                .put("accept", r.accept())
                .put("custom_attributes", r.customAttributes())
                .put("target_variant", r.targetVariant())
                .put("target_container_hostname", r.targetContainerHostname())
                .put("inference_id", r.inferenceId())
                .put("enable_explanations", r.enableExplanations())
                .put("inference_component_name", r.inferenceComponentName())
                .put("session_id", r.sessionId())
                .put("target_model", r.targetModel());
    }

    static JsonLine response(InvokeEndpointResponse r) {
        return new JsonLine("response")
                .put("status", r.sdkHttpResponse().statusCode())
                .put("body_b64", Base64.getEncoder().encodeToString(r.body().asByteArray()))
                .put("content_type", r.contentType())
                .put("invoked_variant", r.invokedProductionVariant())
                .put("custom_attributes", r.customAttributes())
                .put("new_session_id", r.newSessionId())
                .put("closed_session_id", r.closedSessionId())
                .put("header_names", headerNames(r.sdkHttpResponse()));
    }

    /** The response's header names as the SDK received them, lower-cased, sorted, comma-joined. */
    static String headerNames(SdkHttpResponse response) {
        return response.headers().keySet().stream()
                .map(name -> name.toLowerCase(Locale.ROOT))
                .sorted()
                .collect(Collectors.joining(","));
    }

    static JsonLine error(Throwable e) {
        JsonLine line = new JsonLine("error")
                .put("exception", e.getClass().getSimpleName())
                .put("message", e.getMessage());
        if (e instanceof SdkServiceException service) {
            line.put("status", service.statusCode()).put("request_id", service.requestId());
        }
        if (e instanceof AwsServiceException aws && aws.awsErrorDetails() != null) {
            line.put("error_code", aws.awsErrorDetails().errorCode())
                    .put("error_message", aws.awsErrorDetails().errorMessage());
        }
        if (e instanceof ModelErrorException model) {
            line.put("original_status_code", model.originalStatusCode())
                    .put("original_message", model.originalMessage())
                    .put("log_stream_arn", model.logStreamArn());
        }
        if (e instanceof ModelStreamErrorException stream) {
            line.put("stream_error_code", stream.errorCode());
        }
        return line;
    }
}
