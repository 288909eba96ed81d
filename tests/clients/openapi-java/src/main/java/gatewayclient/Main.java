package gatewayclient;

import com.google.gson.Gson;
import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.openapitools.client.ApiClient;
import org.openapitools.client.ApiException;
import org.openapitools.client.ApiResponse;
import org.openapitools.client.api.DefaultApi;
import org.openapitools.client.model.InvokeEndpointAsync202Response;
import org.openapitools.client.model.ModelError;

/**
 * Calls the gateway through the client openapi-generator made from its OpenAPI description
 * and prints what it saw, one JSON object a line. It only reports: the Python test decides
 * what is right.
 *
 * <p>Usage: {@code Main <scenario> <gateway-url> <body-file>}; the body file's bytes are sent
 * as they are. Every other value sent is fixed here.
 */
public final class Main {
    private static final Gson GSON = new Gson();

    private Main() {}

    public static void main(String[] args) throws IOException {
        if (args.length != 3) {
            System.err.println("usage: Main <scenario> <gateway-url> <body-file>");
            System.exit(2);
        }
        ApiClient client = new ApiClient();
        client.setBasePath(args[1]);
        DefaultApi api = new DefaultApi(client);
        File body = new File(args[2]);
        try {
            switch (args[0]) {
                case "invoke-csv" -> invokeCsv(api, body);
                case "async" -> invokeAsync(api, body);
                case "model-error" -> modelError(api, body);
                default -> {
                    System.err.println("unknown scenario: " + args[0]);
                    System.exit(2);
                }
            }
        } catch (ApiException unexpected) {
            System.err.println(unexpected.getCode() + " " + unexpected.getResponseBody());
            System.exit(1);
        }
    }

    /** InvokeEndpoint with a CSV body, its media types and three of its headers. */
    static void invokeCsv(DefaultApi api, File body) throws ApiException, IOException {
        ApiResponse<File> response = api.invokeEndpointWithHttpInfo(
                "echo", body, "text/csv", "text/csv", "trace=openapi-java", null,
                "VariantCsv", null, "openapi-java-1", null, null, null, null);
        Map<String, Object> line = event("response");
        line.put("status", response.getStatusCode());
        line.put("content_type", header(response, "Content-Type"));
        line.put("invoked_variant", header(response, "x-Amzn-Invoked-Production-Variant"));
        line.put("custom_attributes", header(response, "X-Amzn-SageMaker-Custom-Attributes"));
        line.put("body_b64", base64(response.getData()));
        print(line);
    }

    /** InvokeEndpointAsync with the body inline, a time to live and an invocation timeout. */
    static void invokeAsync(DefaultApi api, File body) throws ApiException {
        ApiResponse<InvokeEndpointAsync202Response> response =
                api.invokeEndpointAsyncWithHttpInfo(
                        "echo", "text/csv", "application/json", "trace=openapi-java-async",
                        "openapi-java-async-1", null, null, null, 600, 120, body);
        Map<String, Object> line = event("accepted");
        line.put("status", response.getStatusCode());
        line.put("inference_id", response.getData().getInferenceId());
        line.put("output_location", header(response, "X-Amzn-SageMaker-OutputLocation"));
        line.put("failure_location", header(response, "X-Amzn-SageMaker-FailureLocation"));
        print(line);
    }

    /** InvokeEndpoint on a model that fails: the 424's body read as the generated ModelError. */
    static void modelError(DefaultApi api, File body) throws IOException {
        try {
            api.invokeEndpoint("model-error", body, "text/csv", null, null, null, null, null,
                    null, null, null, null, null);
            print(event("no-error"));
        } catch (ApiException exception) {
            ModelError error = ModelError.fromJson(exception.getResponseBody());
            Map<String, Object> line = event("error");
            line.put("status", exception.getCode());
            line.put("error_type", first(exception.getResponseHeaders(), "x-amzn-ErrorType"));
            line.put("message", error.getMessage());
            line.put("original_status_code", error.getOriginalStatusCode());
            line.put("original_message", error.getOriginalMessage());
            line.put("log_stream_arn", error.getLogStreamArn());
            print(line);
        }
    }

    static Map<String, Object> event(String name) {
        Map<String, Object> line = new LinkedHashMap<>();
        line.put("event", name);
        return line;
    }

    static String header(ApiResponse<?> response, String name) {
        return first(response.getHeaders(), name);
    }

    /** A header's first value; OkHttp gives the names in lower case. */
    static String first(Map<String, List<String>> headers, String name) {
        for (Map.Entry<String, List<String>> header : headers.entrySet()) {
            if (header.getKey().equalsIgnoreCase(name) && !header.getValue().isEmpty()) {
                return header.getValue().get(0);
            }
        }
        return null;
    }

    static String base64(File file) throws IOException {
        return Base64.getEncoder().encodeToString(Files.readAllBytes(file.toPath()));
    }

    static void print(Map<String, Object> line) {
        System.out.println(GSON.toJson(line));
        System.out.flush();
    }
}
