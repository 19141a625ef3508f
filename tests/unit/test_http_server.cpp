// The HTTP front end: a real server on 127.0.0.1 (port 0) and a Beast client in the test. Every
// client operation runs under a deadline, so a misbehaving server fails the test instead of
// hanging it. Loopback only.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "runtime/serve/http_server.h"
#include "runtime/serve/protocol.h"

namespace origami::serve {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string text(beast::string_view v) {
  return std::string(v.data(), v.size());
}

// A client connection whose every operation ends within its deadline.
class Client {
 public:
  explicit Client(uint16_t port) : stream_(ioc_) {
    connect_error_ = run(5s, [&](auto done) {
      stream_.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port),
                            [done](beast::error_code ec) { done(ec, 0); });
    });
  }
  bool connected() const { return !connect_error_; }

  http::response<http::string_body> request(
      http::verb verb, const std::string& target, const std::string& body = "",
      const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    send(verb, target, body, headers);
    http::response<http::string_body> res;
    const beast::error_code ec =
        run(5s, [&](auto done) { http::async_read(stream_, buffer_, res, done); });
    EXPECT_FALSE(ec) << target << ": " << ec.message();
    return res;
  }

  void send(http::verb verb, const std::string& target, const std::string& body = "",
            const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    for (const auto& [name, value] : headers) req.set(name, value);
    req.body() = body;
    req.prepare_payload();
    const beast::error_code ec = run(5s, [&](auto done) { http::async_write(stream_, req, done); });
    EXPECT_FALSE(ec) << ec.message();
  }

  void send_raw(const std::string& bytes) {
    const beast::error_code ec =
        run(5s, [&](auto done) { net::async_write(stream_, net::buffer(bytes), done); });
    EXPECT_FALSE(ec) << ec.message();
  }

  // Everything the server sends until it closes the connection, or until `timeout`.
  std::string read_until_close(std::chrono::milliseconds timeout, bool* closed = nullptr) {
    std::string bytes(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    buffer_.consume(buffer_.size());
    const beast::error_code ec = run(
        timeout, [&](auto done) { net::async_read(stream_, net::dynamic_buffer(bytes), done); });
    if (closed) *closed = ec == net::error::eof || ec == net::error::connection_reset;
    return bytes;
  }

  // Reads a response's header, then the chunks of its body one by one, calling on_chunk for
  // each, until the body ends or `chunks` have been seen.
  http::response<http::string_body> read_stream(
      const std::function<void(const std::string&)>& on_chunk, size_t chunks = SIZE_MAX,
      bool* complete = nullptr) {
    http::response_parser<http::string_body> parser;
    size_t seen = 0;
    std::string piece;
    auto on_body = [&](std::uint64_t remain, beast::string_view body, beast::error_code&) {
      piece.append(body.data(), body.size());
      if (remain == body.size()) {  // the chunk is whole
        on_chunk(piece);
        piece.clear();
        ++seen;
      }
      return body.size();
    };
    parser.on_chunk_body(on_body);
    beast::error_code ec =
        run(5s, [&](auto done) { http::async_read_header(stream_, buffer_, parser, done); });
    EXPECT_FALSE(ec) << ec.message();
    while (!ec && !parser.is_done() && seen < chunks)
      ec = run(5s, [&](auto done) { http::async_read_some(stream_, buffer_, parser, done); });
    EXPECT_FALSE(ec) << ec.message();
    if (complete) *complete = parser.is_done();
    return parser.release();
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

 private:
  // Starts one async operation and runs it to completion or `timeout` (then it is cancelled).
  template <typename Start>
  beast::error_code run(std::chrono::milliseconds timeout, Start start) {
    beast::error_code result = net::error::would_block;
    stream_.expires_after(timeout);
    start([&result](beast::error_code ec, size_t) { result = ec; });
    ioc_.restart();
    ioc_.run();
    return result;
  }

  net::io_context ioc_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  beast::error_code connect_error_;
};

HttpResponse json_response(const json& j) {
  return HttpResponse{200, "application/json", j.dump(), {}};
}

json error_of(const http::response<http::string_body>& res) {
  const json j = json::parse(res.body());
  EXPECT_TRUE(j.contains("error")) << res.body();
  for (const char* key : {"message", "type", "param", "code"})
    EXPECT_TRUE(j["error"].contains(key)) << key << " missing in " << res.body();
  return j["error"];
}

// Waits up to `timeout` for `done()`.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout = 2s) {
  const auto end = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void start(HttpServerOptions options = {}) {
    options.port = 0;
    if (options.threads == 1) options.threads = 2;
    server_ = std::make_unique<HttpServer>(options);
    server_->route(
        "GET", "/health",
        [](const HttpRequest&, auto s) {
          s->respond({200, "text/plain", "ok", {}});
        },
        Auth::open);
    server_->route("POST", "/echo", [](const HttpRequest& r, auto s) {
      s->respond(json_response({{"method", r.method},
                                {"path", r.path},
                                {"query", r.query},
                                {"body", r.body},
                                {"x_test", r.header("x-TEST")}}));
    });
    server_->route("GET", "/echo", [](const HttpRequest& r, auto s) {
      s->respond(json_response({{"method", r.method}, {"path", r.path}}));
    });
    const auto custom = [this](const HttpRequest& r, std::shared_ptr<ResponseStream> s) {
      custom_(r, std::move(s));
    };
    server_->route("POST", "/custom", custom);
    server_->route("GET", "/custom", custom);
    server_->start();
    port_ = server_->port();
  }

  void TearDown() override {
    if (server_) server_->stop(1s);
    for (std::thread& t : workers_) t.join();
  }

  std::unique_ptr<HttpServer> server_;
  uint16_t port_ = 0;
  std::function<void(const HttpRequest&, std::shared_ptr<ResponseStream>)> custom_;
  std::vector<std::thread> workers_;
};

// ---- routes -----------------------------------------------------------------------------------

TEST_F(HttpServerTest, RoutesAnswer) {
  start();
  EXPECT_NE(port_, 0);
  Client c(port_);
  ASSERT_TRUE(c.connected());
  auto health = c.request(http::verb::get, "/health");
  EXPECT_EQ(health.result_int(), 200);
  EXPECT_EQ(health.body(), "ok");
  EXPECT_EQ(text(health[http::field::content_type]), "text/plain");
  EXPECT_EQ(text(health[http::field::server]), "origami");

  auto echo = c.request(http::verb::post, "/echo?a=1&b=2", R"({"x": 1})", {{"X-Test", "yes"}});
  EXPECT_EQ(echo.result_int(), 200);
  EXPECT_EQ(text(echo[http::field::content_type]), "application/json");
  const json j = json::parse(echo.body());
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["path"], "/echo");
  EXPECT_EQ(j["query"], "a=1&b=2");
  EXPECT_EQ(j["body"], R"({"x": 1})");
  EXPECT_EQ(j["x_test"], "yes");
}

TEST_F(HttpServerTest, UnknownRouteIs404AndWrongMethodIs405) {
  start();
  Client c(port_);
  auto missing = c.request(http::verb::get, "/v1/nothing");
  EXPECT_EQ(missing.result_int(), 404);
  const json e = error_of(missing);
  EXPECT_EQ(e["code"], "not_found");
  EXPECT_EQ(e["type"], "invalid_request_error");
  EXPECT_NE(e["message"].get<std::string>().find("/v1/nothing"), std::string::npos);

  auto wrong = c.request(http::verb::delete_, "/echo");  // the connection stays usable
  EXPECT_EQ(wrong.result_int(), 405);
  EXPECT_EQ(text(wrong[http::field::allow]), "GET, POST");
  EXPECT_EQ(error_of(wrong)["code"], "method_not_allowed");
  EXPECT_EQ(c.request(http::verb::post, "/health").result_int(), 405);
  EXPECT_EQ(c.request(http::verb::get, "/health").result_int(), 200);
}

TEST_F(HttpServerTest, KeepAliveServesManyRequestsOnOneConnection) {
  start();
  Client c(port_);
  for (int i = 0; i < 5; ++i) {
    auto res = c.request(http::verb::post, "/echo", std::to_string(i));
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_TRUE(res.keep_alive());
    EXPECT_EQ(json::parse(res.body())["body"], std::to_string(i));
  }
  EXPECT_EQ(server_->connections(), 1u);
  // Pipelined: two requests in one write, two answers in order.
  c.send_raw(
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA"
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nB");
  bool closed = false;
  const std::string both = c.read_until_close(3s, &closed);
  EXPECT_TRUE(closed);
  const size_t a = both.find(R"("body":"A")"), b = both.find(R"("body":"B")");
  EXPECT_NE(a, std::string::npos) << both;
  EXPECT_NE(b, std::string::npos) << both;
  EXPECT_LT(a, b);
}

// ---- refusals -----------------------------------------------------------------------------------

TEST_F(HttpServerTest, BodyOverTheLimitIs413) {
  HttpServerOptions options;
  options.body_limit = 1024;
  start(options);
  {
    Client c(port_);
    EXPECT_EQ(c.request(http::verb::post, "/echo", std::string(1024, 'a')).result_int(), 200);
    auto res = c.request(http::verb::post, "/echo", std::string(2000, 'a'));
    EXPECT_EQ(res.result_int(), 413);
    EXPECT_FALSE(res.keep_alive());
    EXPECT_NE(error_of(res)["message"].get<std::string>().find("1024"), std::string::npos);
  }
  {  // refused on the header alone, before any of the body arrives
    Client c(port_);
    c.send_raw("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n");
    bool closed = false;
    const std::string reply = c.read_until_close(3s, &closed);
    EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply;
    EXPECT_TRUE(closed);
  }
  {  // a chunked body is counted as it arrives
    Client c(port_);
    c.send_raw("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" +
               std::string(0x800, 'b') + "\r\n0\r\n\r\n");
    const std::string reply = c.read_until_close(3s);
    EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply.substr(0, 100);
  }
}

TEST_F(HttpServerTest, MalformedHttpIs400AndTheServerCarriesOn) {
  HttpServerOptions options;
  options.header_limit = 4096;
  start(options);
  const std::vector<std::string> garbage = {
      "GARBAGE\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "GET /health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
      "POST /echo HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
      "POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
      "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      std::string("\x00\x01\x02\xff\r\n\r\n", 8),
  };
  for (const std::string& bytes : garbage) {
    Client c(port_);
    c.send_raw(bytes);
    bool closed = false;
    const std::string reply = c.read_until_close(3s, &closed);
    EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u)
        << json(bytes).dump(-1, ' ', true) << ": " << reply;
    EXPECT_NE(reply.find(R"("error")"), std::string::npos) << reply;
    EXPECT_TRUE(closed);
  }
  {
    Client c(port_);
    c.send_raw("GET /health HTTP/1.1\r\nX-Big: " + std::string(8000, 'h') + "\r\n\r\n");
    const std::string reply = c.read_until_close(3s);
    EXPECT_EQ(reply.rfind("HTTP/1.1 431", 0), 0u) << reply.substr(0, 100);
  }
  Client c(port_);
  EXPECT_EQ(c.request(http::verb::get, "/health").result_int(), 200);
}

TEST_F(HttpServerTest, SlowRequestTimesOut) {
  HttpServerOptions options;
  options.read_timeout = 200ms;
  start(options);
  Client c(port_);
  c.send_raw("POST /echo HTTP/1.1\r\nHost: x\r\n");  // and nothing more
  const auto t0 = Clock::now();
  bool closed = false;
  c.read_until_close(3s, &closed);
  EXPECT_TRUE(closed);
  EXPECT_LT(Clock::now() - t0, 2s);
}

TEST_F(HttpServerTest, ApiKey) {
  HttpServerOptions options;
  options.api_key = "s3cret-key";
  start(options);
  Client c(port_);
  auto none = c.request(http::verb::post, "/echo", "x");
  EXPECT_EQ(none.result_int(), 401);
  EXPECT_EQ(error_of(none)["code"], "invalid_api_key");
  EXPECT_EQ(text(none[http::field::www_authenticate]), "Bearer");
  for (const std::string wrong :
       {"Bearer s3cret-kez", "Bearer s3cret-key2", "Bearer s3cret", "Bearer ", "Basic s3cret-key",
        "s3cret-key", "Bearer s3cret-keys3cret-key"}) {
    auto res = c.request(http::verb::post, "/echo", "x", {{"Authorization", wrong}});
    EXPECT_EQ(res.result_int(), 401) << wrong;
  }
  for (const std::string right : {"Bearer s3cret-key", "bearer s3cret-key", "Bearer  s3cret-key "})
    EXPECT_EQ(c.request(http::verb::post, "/echo", "x", {{"Authorization", right}}).result_int(),
              200)
        << right;
  EXPECT_EQ(c.request(http::verb::get, "/health").result_int(), 200);  // open route
  EXPECT_EQ(c.request(http::verb::get, "/nope").result_int(), 404);
}

// ---- handlers -----------------------------------------------------------------------------------

TEST_F(HttpServerTest, HandlerErrorsAndLateAnswers) {
  start();
  Client c(port_);
  custom_ = [](const HttpRequest&, auto) {
    throw ProtocolError(400, "'n' must be at least 1", "n");
  };
  auto refused = c.request(http::verb::post, "/custom");
  EXPECT_EQ(refused.result_int(), 400);
  EXPECT_EQ(error_of(refused)["param"], "n");

  custom_ = [](const HttpRequest&, auto) { throw std::runtime_error("engine exploded"); };
  auto failed = c.request(http::verb::post, "/custom");
  EXPECT_EQ(failed.result_int(), 500);
  EXPECT_EQ(error_of(failed)["type"], "internal_error");

  custom_ = [](const HttpRequest&, auto) {};  // drops the stream unanswered
  auto dropped = c.request(http::verb::post, "/custom");
  EXPECT_EQ(dropped.result_int(), 500);

  custom_ = [this](const HttpRequest&, std::shared_ptr<ResponseStream> s) {
    workers_.emplace_back([s] {
      std::this_thread::sleep_for(30ms);
      s->respond({429,
                  "application/json",
                  encode_error("busy", "rate_limit_error"),
                  {{"Retry-After", "1"}}});
      s->respond({200, "text/plain", "ignored", {}});
    });
  };
  auto late = c.request(http::verb::post, "/custom");
  EXPECT_EQ(late.result_int(), 429);
  EXPECT_EQ(text(late["Retry-After"]), "1");
  EXPECT_EQ(c.request(http::verb::get, "/health").result_int(), 200);  // still in step
}

TEST_F(HttpServerTest, ExpectContinue) {
  start();
  Client c(port_);
  c.send_raw(
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
      "Connection: close\r\n\r\n");
  std::this_thread::sleep_for(50ms);
  c.send_raw("hello");
  const std::string reply = c.read_until_close(3s);
  EXPECT_EQ(reply.rfind("HTTP/1.1 100 Continue\r\n", 0), 0u) << reply;
  EXPECT_NE(reply.find("HTTP/1.1 200"), std::string::npos) << reply;
  EXPECT_NE(reply.find(R"("body":"hello")"), std::string::npos) << reply;
}

// ---- streaming ----------------------------------------------------------------------------------

TEST_F(HttpServerTest, StreamArrivesChunkByChunk) {
  start();
  // Lockstep: the writer sends event i only after the client has read event i-1, so a server
  // that held the stream back until the end would never finish.
  std::mutex mutex;
  std::condition_variable cv;
  int client_seen = 0;
  custom_ = [&](const HttpRequest&, std::shared_ptr<ResponseStream> s) {
    s->begin_stream(200, "text/event-stream", {{"X-Request-Id", "r1"}});
    workers_.emplace_back([&, s] {
      for (int i = 0; i < 5; ++i) {
        std::unique_lock lock(mutex);
        if (!cv.wait_for(lock, 3s, [&] { return client_seen == i; })) return;
        lock.unlock();
        EXPECT_TRUE(s->write(sse_event(json{{"i", i}}.dump())));
      }
      s->write(std::string(kSseDone));
      s->finish();
      EXPECT_FALSE(s->write("late"));
    });
  };
  Client c(port_);
  c.send(http::verb::post, "/custom", "{}");
  std::vector<std::string> chunks;
  bool complete = false;
  auto res = c.read_stream(
      [&](const std::string& chunk) {
        chunks.push_back(chunk);
        std::lock_guard lock(mutex);
        ++client_seen;
        cv.notify_all();
      },
      SIZE_MAX, &complete);
  EXPECT_TRUE(complete);
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(text(res[http::field::content_type]), "text/event-stream");
  EXPECT_EQ(text(res[http::field::cache_control]), "no-cache");
  EXPECT_EQ(text(res["X-Request-Id"]), "r1");
  EXPECT_TRUE(res.chunked());
  // Events 0-4 each in a chunk of their own (lockstep); [DONE] may share the last one, as the
  // server joins what is queued when a write completes.
  ASSERT_GE(chunks.size(), 5u);
  std::string all;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i < 4) {
      EXPECT_EQ(chunks[i], "data: {\"i\":" + std::to_string(i) + "}\n\n");
    }
    all += chunks[i];
  }
  EXPECT_EQ(all.substr(all.size() - kSseDone.size()), kSseDone);
  EXPECT_EQ(all.size(), 5 * std::string("data: {\"i\":0}\n\n").size() + kSseDone.size());
  // The connection serves the next request.
  EXPECT_EQ(c.request(http::verb::get, "/health").result_int(), 200);
}

TEST_F(HttpServerTest, StreamToAnHttp10ClientEndsByClosing) {
  start();
  custom_ = [](const HttpRequest&, std::shared_ptr<ResponseStream> s) {
    s->write(sse_event("{\"a\":1}"));
    s->write(std::string(kSseDone));
    s->finish();
  };
  Client c(port_);
  c.send_raw("GET /custom HTTP/1.0\r\n\r\n");
  bool closed = false;
  const std::string reply = c.read_until_close(3s, &closed);
  EXPECT_TRUE(closed);
  EXPECT_EQ(reply.rfind("HTTP/1.0 200", 0), 0u) << reply;
  EXPECT_EQ(reply.find("chunked"), std::string::npos) << reply;
  EXPECT_NE(reply.find("\r\n\r\ndata: {\"a\":1}\n\ndata: [DONE]\n\n"), std::string::npos) << reply;
}

TEST_F(HttpServerTest, ClientLeavingMidStreamIsReported) {
  start();
  std::promise<Clock::time_point> closed_at;
  std::shared_ptr<ResponseStream> kept;
  custom_ = [&](const HttpRequest&, std::shared_ptr<ResponseStream> s) {
    kept = s;
    s->on_close([&] { closed_at.set_value(Clock::now()); });
    s->write(sse_event("{}"));
  };
  Client c(port_);
  c.send(http::verb::post, "/custom");
  int chunks = 0;
  c.read_stream([&](const std::string&) { ++chunks; }, 1);
  EXPECT_EQ(chunks, 1);
  EXPECT_FALSE(kept->closed());
  const auto left = Clock::now();
  c.close();
  auto future = closed_at.get_future();
  ASSERT_EQ(future.wait_for(2s), std::future_status::ready);
  EXPECT_LT(future.get() - left, 500ms);
  EXPECT_TRUE(kept->closed());
  EXPECT_FALSE(kept->write(sse_event("{}")));
  bool late_callback = false;  // registered after the close: runs at once
  kept->on_close([&] { late_callback = true; });
  EXPECT_TRUE(late_callback);
  EXPECT_TRUE(eventually([&] { return server_->connections() == 0; }));
}

TEST_F(HttpServerTest, ClientLeavingBeforeTheAnswerIsReported) {
  start();
  std::atomic<bool> closed{false};
  std::shared_ptr<ResponseStream> kept;
  std::atomic<bool> dispatched{false};
  custom_ = [&](const HttpRequest&, std::shared_ptr<ResponseStream> s) {
    kept = s;
    s->on_close([&] { closed = true; });
    dispatched = true;
  };
  Client c(port_);
  c.send(http::verb::post, "/custom", R"({"prompt": "x"})");
  ASSERT_TRUE(eventually([&] { return dispatched.load(); }));
  c.close();
  EXPECT_TRUE(eventually([&] { return closed.load(); }, 1s));
  EXPECT_TRUE(kept->closed());
}

TEST_F(HttpServerTest, ASlowReaderIsDroppedPastTheBacklogLimit) {
  HttpServerOptions options;
  options.stream_backlog_limit = 256 << 10;
  start(options);
  std::atomic<bool> closed{false};
  custom_ = [&](const HttpRequest&, std::shared_ptr<ResponseStream> s) {
    s->on_close([&] { closed = true; });
    workers_.emplace_back([s] {
      const std::string event = sse_event(std::string(64 << 10, 'x'));
      for (int i = 0; i < 2048 && s->write(event); ++i) {  // at most 128 MiB
      }
    });
  };
  Client c(port_);
  c.send(http::verb::post, "/custom");  // and never reads
  EXPECT_TRUE(eventually([&] { return closed.load(); }, 5s));
}

// ---- stopping -----------------------------------------------------------------------------------

TEST_F(HttpServerTest, StopLetsAStreamInFlightFinish) {
  start();
  custom_ = [&](const HttpRequest&, std::shared_ptr<ResponseStream> s) {
    s->begin_stream();
    workers_.emplace_back([s] {
      for (int i = 0; i < 5; ++i) {
        std::this_thread::sleep_for(40ms);
        s->write(sse_event(std::to_string(i)));
      }
      s->finish();
    });
  };
  Client idle(port_);
  EXPECT_EQ(idle.request(http::verb::get, "/health").result_int(), 200);
  Client c(port_);
  c.send(http::verb::post, "/custom");
  std::vector<std::string> chunks;
  std::thread stopper;
  Clock::time_point t0;
  bool complete = false;
  c.read_stream(
      [&](const std::string& chunk) {
        chunks.push_back(chunk);
        if (chunks.size() > 1) return;
        // The stream is under way: stop the server now.
        t0 = Clock::now();
        stopper = std::thread([&] { server_->stop(5s); });
        bool idle_closed = false;
        idle.read_until_close(2s, &idle_closed);  // an idle connection closes at once
        EXPECT_TRUE(idle_closed);
        EXPECT_LT(Clock::now() - t0, 1s);
      },
      SIZE_MAX, &complete);
  // The response in flight ended whole, then its connection closed.
  bool closed = false;
  c.read_until_close(2s, &closed);
  c.close();
  stopper.join();
  EXPECT_TRUE(complete);
  EXPECT_EQ(chunks.size(), 5u);
  EXPECT_TRUE(closed);
  EXPECT_LT(Clock::now() - t0, 4s);
  Client late(port_);  // no longer listening
  EXPECT_FALSE(late.connected());
}

TEST_F(HttpServerTest, StopClosesWhatOutlivesTheDeadline) {
  start();
  std::shared_ptr<ResponseStream> kept;
  std::atomic<bool> closed{false};
  custom_ = [&](const HttpRequest&, std::shared_ptr<ResponseStream> s) {
    kept = s;
    s->on_close([&] { closed = true; });
    s->write(sse_event("{}"));  // and never finishes
  };
  Client c(port_);
  c.send(http::verb::post, "/custom");
  c.read_stream([](const std::string&) {}, 1);
  const auto t0 = Clock::now();
  server_->stop(200ms);
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 2s);
  EXPECT_TRUE(closed.load());
  EXPECT_TRUE(kept->closed());
  EXPECT_FALSE(kept->write("x"));  // after stop: refused, harmless
  kept->finish();
  server_->stop();  // twice: nothing happens
}

TEST_F(HttpServerTest, PortInUseIsAClearError) {
  start();
  HttpServerOptions options;
  options.port = port_;
  HttpServer second(options);
  try {
    second.start();
    FAIL() << "a second server bound the same port";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(port_)), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace origami::serve
